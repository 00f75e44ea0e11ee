"""RoPE and crop-tied sin-cos checkpoints (docs/positions.md) through export and conversion, against our own ViT."""

from __future__ import annotations

import pytest
import torch

from pretrain.export import export_backbone, load_backbone
from tests.transfer.convert.references import (
    HEADS,
    TOL,
    D,
    convert,
    image,
    max_diff,
    needs_d2,
    needs_mmseg,
    ours_model,
)
from transfer.convert.api import convert_checkpoint
from transfer.convert.canonical import ConversionError


def pos_model(kind: str, regs=0, ls=True, img_size=64):
    """``ours_model`` with RoPE, crop-tied sin-cos or (otherwise) the field, seeded."""
    torch.manual_seed(0)
    if kind == "rope":
        return ours_model(False, regs, ls, img_size, (50, 50), pos_embed_type="none", rope=True)
    if kind == "crop_sincos":
        return ours_model(False, regs, ls, img_size, (6, 6), pos_embed_type="crop_sincos")
    return ours_model(True, regs, ls, img_size, (50, 50))


def patch_tokens(model, img, with_cls=True, final_norm=True):
    """Our RoPE ViT at the image's integer grid, optionally without the CLS token (and never with registers)."""
    with torch.no_grad():
        seq, grid = model.prepare_tokens(img)
        r = model.num_prefix_tokens
        x = torch.cat(([seq[:, :1]] if with_cls else []) + [seq[:, r:]], 1)
        angles = model.attention_angles(grid)
        for blk in model.blocks:
            x = blk(x, angles, int(with_cls))
        x = model.norm(x) if final_norm else x
        return x[:, int(with_cls) :]


@pytest.fixture(scope="module")
def rope_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("rope")
    model = pos_model("rope", regs=1)
    export_backbone(model, d / "backbone.pth")
    return model, d / "backbone.pth", d


def test_a_rope_export_records_rope_and_reloads_to_the_same_model(rope_export):
    model, path, _ = rope_export
    obj = torch.load(path, weights_only=True)
    assert obj["meta"]["positions"]["kind"] == "rope"
    assert obj["meta"]["positions"]["rule"] == "axial" and obj["meta"]["positions"]["base"] == 10000.0
    assert not any("pos" in k for k in obj["model"] if k != "posmask_token")
    loaded, _ = load_backbone(path)
    img = image((3, 5))
    assert torch.allclose(loaded.eval()(img)["patch"], model(img)["patch"], atol=1e-6)


@needs_d2
def test_rope_to_detectron2_loads_into_the_rope_sdpa_backbone_and_matches(rope_export, tmp_path):
    from transfer.vitdet.backbone import SDPAViT
    from transfer.vitdet.plain_vit import plain_vit_kwargs

    model, path, _ = rope_export
    dst = convert(tmp_path, path, "detectron2", "--grid", "4", "4", "--patch-size", "16", "--drop-registers")
    ckpt = torch.load(dst, weights_only=True)
    assert "backbone.net.pos_embed" not in ckpt["model"]
    assert ckpt["meta"]["rope"] == {"rule": "axial", "base": 10000.0, "coords": "grid"}
    kw = plain_vit_kwargs(img_size=64, patch_size=16, embed_dim=D, depth=2, num_heads=HEADS)
    kw.update(use_abs_pos=False, pretrain_use_cls_token=False)
    sd = {k[len("backbone.net.") :]: v for k, v in ckpt["model"].items()}

    def features(use_rope, img):
        net = SDPAViT(**kw, use_rope=use_rope).eval()
        net.load_state_dict(sd, strict=True)
        with torch.no_grad():
            return net(img)["last_feat"].flatten(2).transpose(1, 2)

    for grid in ((4, 4), (3, 5)):  # the same rule at another input size
        img = image(grid)
        ref = patch_tokens(model, img, with_cls=False, final_norm=False)
        assert max_diff(features(True, img), ref) <= TOL * max(1.0, float(ref.abs().max()))
    img = image((4, 4))
    assert max_diff(features(False, img), patch_tokens(model, img, False, False)) > 1e-2  # RoPE matters


@needs_mmseg
def test_rope_to_mmseg_loads_into_the_rope_mmseg_backbone_and_matches(tmp_path):
    from transfer.segmenter.rope_vit import RoPEVisionTransformer

    model = pos_model("rope")
    export_backbone(model, tmp_path / "backbone.pth")
    dst = convert(tmp_path, tmp_path / "backbone.pth", "mmseg", "--grid", "4", "4", "--patch-size", "16")
    ckpt = torch.load(dst, weights_only=True)
    assert "pos_embed" not in ckpt["state_dict"] and ckpt["meta"]["backbone_type"] == "RoPEVisionTransformer"
    net = RoPEVisionTransformer(
        img_size=(64, 64),
        patch_size=16,
        embed_dims=D,
        num_layers=2,
        num_heads=HEADS,
        final_norm=True,
        with_cls_token=True,
        patch_bias=True,
        norm_cfg=dict(type="LN", eps=1e-6),
        drop_path_rate=0.0,
    )
    net.load_state_dict(ckpt["state_dict"], strict=True)
    net.eval()
    for grid in ((4, 4), (2, 6)):
        img = image(grid)
        with torch.no_grad():
            out = net(img)[-1].flatten(2).transpose(1, 2)
        ref = patch_tokens(model, img)
        assert max_diff(out, ref) <= TOL * max(1.0, float(ref.abs().max()))


def test_rope_to_timm_is_refused_with_a_clear_message(rope_export, tmp_path):
    _, path, _ = rope_export
    with pytest.raises(ConversionError, match="RoPE.*timm"):
        convert_checkpoint(path, tmp_path / "t.pth", "timm", grid=(4, 4), drop_registers=True, quiet=True)
    assert not (tmp_path / "t.pth").exists()


@needs_d2
def test_a_rope_source_at_another_patch_size_is_refused(rope_export, tmp_path):
    _, path, _ = rope_export
    with pytest.raises(ConversionError, match="own patch size"):
        convert_checkpoint(
            path, tmp_path / "d.pth", "detectron2", grid=(4, 4), patch_size=8, drop_registers=True, quiet=True
        )


def test_a_crop_sincos_export_is_an_ordinary_pos_embed_at_the_export_grid(tmp_path):
    from pretrain.models.crop_positions import continuous_sincos_2d, full_image_coords

    model = pos_model("crop_sincos", img_size=64)
    export_backbone(model, tmp_path / "b.pth")
    obj = torch.load(tmp_path / "b.pth", weights_only=True)
    assert obj["meta"]["positions"] == {"kind": "crop_sincos", "extent": [6, 6], "materialised_grid": [4, 4]}
    assert obj["meta"]["arch"]["pos_embed_type"] == "learned" and "cls_pos_embed" not in obj["model"]
    pe = obj["model"]["pos_embed"]
    assert torch.equal(pe[:, :1], model.cls_pos_embed.detach())
    # the whole virtual image at 4 x 4 in 6 x 6 units: rows / columns (i + 0.5) * 1.5 - 0.5
    expected = continuous_sincos_2d(full_image_coords((4, 4), (6, 6)), D)
    assert torch.allclose(pe[:, 1:], expected)
    assert torch.allclose(full_image_coords((4, 4), (6, 6))[0, :2], torch.tensor([[0.25, 0.25], [0.25, 1.75]]))
    loaded, _ = load_backbone(tmp_path / "b.pth")
    img = image((4, 4))
    assert torch.allclose(loaded.eval()(img)["patch"], model(img)["patch"], atol=1e-5)


@needs_d2
def test_a_crop_sincos_export_converts_with_parity(tmp_path):
    model = pos_model("crop_sincos")
    export_backbone(model, tmp_path / "b.pth")
    s = convert_checkpoint(tmp_path / "b.pth", tmp_path / "d.pth", "detectron2", grid=(4, 4), quiet=True)
    assert s["parity"].ok and s["meta"]["position_source"] == "grid"
