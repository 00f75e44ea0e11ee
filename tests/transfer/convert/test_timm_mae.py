"""timm ViTs and MAE releases."""

from __future__ import annotations

import pytest
import torch

from tests.transfer.convert.references import (
    HEADS,
    TOL,
    D,
    convert,
    convert_logged,
    d2_features,
    hand_vit_patches,
    image,
    mae_checkpoint,
    max_diff,
    mmseg_features,
    needs_d2,
    needs_mmseg,
    randomise_,
    saved,
    timm_features,
)

# parity: timm ViT and MAE release


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    """A random timm ViT (LayerScale, a 10-class head) at its native 4x4 grid, its saved state dict, an image."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=64, patch_size=16, embed_dim=D, depth=2, num_heads=HEADS, init_values=1e-5, num_classes=10
    ).eval()
    randomise_(model)
    src = saved(model.state_dict(), tmp_path_factory.mktemp("timm") / "timm_vit.pth")
    return model, src, image((4, 4))


@pytest.fixture(scope="module")
def timm_to_d2(timm_vit):
    _, src, _ = timm_vit
    return convert_logged(src.parent, src, "detectron2", "--grid", "4", "4", "--num-heads", "2")


@needs_d2
@pytest.mark.parametrize(("conversion", "fmt"), [("timm_to_d2", "timm"), ("mae_to_d2", "mae")])
def test_the_conversion_log_names_the_detected_format(conversion, fmt, request):
    _, out = request.getfixturevalue(conversion)
    assert f"format: {fmt}" in out


@needs_d2
def test_timm_conversion_log_says_the_classification_head_is_dropped(timm_to_d2):
    _, out = timm_to_d2
    assert "head.weight: projection/classification head" in out


@needs_d2
def test_timm_to_detectron2_matches_the_hand_reference_without_cls_or_final_norm(timm_vit, timm_to_d2):
    model, _, img = timm_vit
    d2, _ = timm_to_d2
    sd = model.state_dict()
    pos = sd["pos_embed"][:, 1:]  # native grid 4x4 == target grid: no resampling
    ref = hand_vit_patches(sd, img, 16, pos)
    assert max_diff(d2_features(d2, img), ref) <= TOL


def test_the_hand_reference_with_cls_and_final_norm_is_the_timm_model_itself(timm_vit):
    model, _, img = timm_vit
    sd = model.state_dict()
    pos = sd["pos_embed"][:, 1:]
    with torch.no_grad():
        assert (
            max_diff(
                model.forward_features(img)[:, 1:],
                hand_vit_patches(
                    sd,
                    img,
                    16,
                    pos,
                    sd["cls_token"] + sd["pos_embed"][:, :1],
                    final_norm=(sd["norm.weight"], sd["norm.bias"]),
                ),
            )
            <= TOL
        )


@needs_mmseg
def test_timm_to_mmseg_matches_the_timm_models_patch_features(timm_vit):
    model, src, img = timm_vit
    mm, _ = convert_logged(src.parent, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    with torch.no_grad():
        ref = model.forward_features(img)[:, 1:]
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


def test_timm_vit_with_registers_and_no_embed_class_converts_to_timm_exactly(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=64,
        patch_size=16,
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        reg_tokens=3,
        no_embed_class=True,
        init_values=1e-5,
        num_classes=0,
        global_pool="avg",
        fc_norm=False,
    ).eval()
    randomise_(model)
    src = saved(model.state_dict(), tmp_path / "timm_reg.pth")
    dst = convert(tmp_path, src, "timm", "--grid", "4", "4", "--num-heads", "2")
    img = image((4, 4))
    with torch.no_grad():
        ref = model.forward_features(img)[:, model.num_prefix_tokens :]
    assert max_diff(timm_features(dst, img), ref) <= TOL


@pytest.fixture(scope="module")
def mae_release(tmp_path_factory):
    """An MAE release checkpoint (encoder with mlp_ratio 2, decoder, mask token), its state dict, an image."""
    torch.manual_seed(0)
    ckpt, sd = mae_checkpoint()
    src = saved(ckpt, tmp_path_factory.mktemp("mae") / "mae.pth")
    return src, sd, image((4, 4))


@pytest.fixture(scope="module")
def mae_to_d2(mae_release):
    src, _, _ = mae_release
    return convert_logged(src.parent, src, "detectron2", "--grid", "4", "4", "--num-heads", "2")


@needs_d2
def test_mae_conversion_log_says_the_decoder_and_mask_token_are_dropped(mae_to_d2):
    _, out = mae_to_d2
    assert "decoder_pred.weight: MAE decoder" in out and "mask_token" in out


@needs_d2
def test_mae_conversion_log_reports_the_mlp_ratio_read_from_the_weights(mae_to_d2):
    _, out = mae_to_d2
    assert "mlp_ratio=2" in out


@needs_d2
def test_mae_to_detectron2_matches_the_hand_reference_without_cls_or_final_norm(mae_release, mae_to_d2):
    _, sd, img = mae_release
    d2, _ = mae_to_d2
    ref = hand_vit_patches(sd, img, 16, sd["pos_embed"][:, 1:])
    assert max_diff(d2_features(d2, img), ref) <= TOL


@needs_mmseg
def test_mae_to_mmseg_matches_the_hand_reference_with_cls_and_final_norm(mae_release):
    src, sd, img = mae_release
    mm, _ = convert_logged(src.parent, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    ref = hand_vit_patches(
        sd,
        img,
        16,
        sd["pos_embed"][:, 1:],
        sd["cls_token"] + sd["pos_embed"][:, :1],
        final_norm=(sd["norm.weight"], sd["norm.bias"]),
    )
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


@pytest.fixture(scope="module")
def global_pool_mae_to_mmseg(tmp_path_factory):
    """A global-pool MAE (``fc_norm`` instead of ``norm``) converted to mmseg: its state dict, the written state
    dict and the printed summary."""
    torch.manual_seed(0)
    ckpt, sd = mae_checkpoint(fc_norm=True)
    src = saved(ckpt, tmp_path_factory.mktemp("mae_gp") / "mae_gp.pth")
    mm, out = convert_logged(src.parent, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    return sd, torch.load(mm, weights_only=True)["state_dict"], out


@needs_mmseg
def test_global_pool_mae_conversion_log_says_fc_norm_is_the_final_norm(global_pool_mae_to_mmseg):
    _, _, out = global_pool_mae_to_mmseg
    assert "'fc_norm.*' (global-pool MAE) used as the final norm" in out


@needs_mmseg
def test_global_pool_mae_fc_norm_is_written_as_mmsegs_final_norm(global_pool_mae_to_mmseg):
    sd, out, _ = global_pool_mae_to_mmseg
    assert torch.equal(out["ln1.weight"], sd["fc_norm.weight"]) and torch.equal(out["ln1.bias"], sd["fc_norm.bias"])
