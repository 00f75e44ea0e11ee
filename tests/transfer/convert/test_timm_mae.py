"""timm ViTs and MAE releases."""

from __future__ import annotations

import torch

from tests.transfer.convert.references import (
    HEADS,
    TOL,
    D,
    convert,
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


@needs_d2
@needs_mmseg
def test_timm_parity(tmp_path, capsys):
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=64, patch_size=16, embed_dim=D, depth=2, num_heads=HEADS, init_values=1e-5, num_classes=10
    ).eval()
    randomise_(model)
    src = saved(model.state_dict(), tmp_path / "timm_vit.pth")
    img = image((4, 4))
    d2 = convert(tmp_path, src, "detectron2", "--grid", "4", "4", "--num-heads", "2")
    out = capsys.readouterr().out
    assert "format: timm" in out and "head.weight: projection/classification head" in out
    sd = model.state_dict()
    pos = sd["pos_embed"][:, 1:]  # native grid 4x4 == target grid: no resampling
    ref = hand_vit_patches(sd, img, 16, pos)
    assert max_diff(d2_features(d2, img), ref) <= TOL
    with torch.no_grad():  # and the hand reference is the timm model itself
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
    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    with torch.no_grad():
        ref = model.forward_features(img)[:, 1:]
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


def test_timm_registers_no_embed_class_to_timm(tmp_path):
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


@needs_d2
@needs_mmseg
def test_mae_parity(tmp_path, capsys):
    ckpt, sd = mae_checkpoint()
    src = saved(ckpt, tmp_path / "mae.pth")
    img = image((4, 4))
    d2 = convert(tmp_path, src, "detectron2", "--grid", "4", "4", "--num-heads", "2")
    out = capsys.readouterr().out
    assert "format: mae" in out and "decoder_pred.weight: MAE decoder" in out and "mask_token" in out
    assert "mlp_ratio=2" in out
    ref = hand_vit_patches(sd, img, 16, sd["pos_embed"][:, 1:])
    assert max_diff(d2_features(d2, img), ref) <= TOL
    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    ref = hand_vit_patches(
        sd,
        img,
        16,
        sd["pos_embed"][:, 1:],
        sd["cls_token"] + sd["pos_embed"][:, :1],
        final_norm=(sd["norm.weight"], sd["norm.bias"]),
    )
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


@needs_mmseg
def test_mae_fc_norm_used_as_final_norm(tmp_path, capsys):
    ckpt, sd = mae_checkpoint(fc_norm=True)
    src = saved(ckpt, tmp_path / "mae_gp.pth")
    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    assert "'fc_norm.*' (global-pool MAE) used as the final norm" in capsys.readouterr().out
    out = torch.load(mm, weights_only=True)["state_dict"]
    assert torch.equal(out["ln1.weight"], sd["fc_norm.weight"]) and torch.equal(out["ln1.bias"], sd["fc_norm.bias"])
