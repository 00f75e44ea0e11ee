"""DINOv2 layouts (patch 14, block_chunks, registers, LayerScale, teacher checkpoints)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.transfer.convert.references import (
    TOL,
    D,
    convert,
    d2_features,
    dinov2_checkpoint,
    hand_vit_patches,
    image,
    max_diff,
    mmseg_features,
    needs_d2,
    needs_mmseg,
    saved,
    timm_features,
)

# parity: DINOv2 layout (patch 14, block_chunks, registers, LayerScale, teacher checkpoint)


def dinov2_reference(flat, img, grid, with_cls, with_regs, final_norm):
    from timm.layers import resample_patch_embed

    sd = dict(flat)
    sd["patch_embed.proj.weight"] = resample_patch_embed(flat["patch_embed.proj.weight"], [16, 16])
    n = int((flat["pos_embed"].shape[1] - 1) ** 0.5)
    g = flat["pos_embed"][:, 1:].reshape(1, n, n, D).permute(0, 3, 1, 2)
    pos = F.interpolate(g, size=grid, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    cls = flat["cls_token"] + flat["pos_embed"][:, :1] if with_cls else None
    regs = flat["register_tokens"] if with_regs else None
    fn = (flat["norm.weight"], flat["norm.bias"]) if final_norm else None
    return hand_vit_patches(sd, img, 16, pos, cls, regs, depth=4, final_norm=fn)


@needs_d2
@needs_mmseg
def test_dinov2_parity(tmp_path, capsys):
    ckpt, flat = dinov2_checkpoint()
    src = saved(ckpt, tmp_path / "dinov2_teacher.pth")
    grid = (4, 4)
    img = image(grid)
    d2 = convert(tmp_path, src, "detectron2", "--grid", "4", "4", "--drop-registers", "--num-heads", "2")
    out = capsys.readouterr().out
    assert "format: dinov2" in out and "dino_head.mlp.0.weight" in out and "mask_token: training-only" in out
    assert "flattened" in out and "resampled" in out and "norm.weight" in out
    ref = dinov2_reference(flat, img, grid, False, False, False)
    assert max_diff(d2_features(d2, img), ref) <= TOL

    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4", "--drop-registers", "--num-heads", "2")
    ref = dinov2_reference(flat, img, grid, True, False, True)
    assert max_diff(mmseg_features(mm, img), ref) <= TOL

    tm = convert(tmp_path, src, "timm", "--grid", "4", "4", "--num-heads", "2")  # registers kept
    ref = dinov2_reference(flat, img, grid, True, True, True)
    assert max_diff(timm_features(tm, img), ref) <= TOL
    assert torch.load(tm, weights_only=True)["meta"]["num_register_tokens"] == 4
