"""DINOv2 layouts (patch 14, block_chunks, registers, LayerScale, teacher checkpoints)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.transfer.convert.references import (
    TOL,
    D,
    convert_logged,
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

GRID = (4, 4)


def dinov2_reference(flat, img, grid, with_cls, with_regs, final_norm):
    from timm.layers import resample_patch_embed

    sd = dict(flat)
    sd["patch_embed.proj.weight"] = resample_patch_embed(flat["patch_embed.proj.weight"], [16, 16])
    n = int((flat["pos_embed"].shape[1] - 1) ** 0.5)
    g = flat["pos_embed"][:, 1:].reshape(1, n, n, D).permute(0, 3, 1, 2)
    # DINOv2's register models resize by size with antialias (hub: interpolate_antialias=True, offset 0)
    pos = F.interpolate(g, size=grid, mode="bicubic", align_corners=False, antialias=True).flatten(2).transpose(1, 2)
    cls = flat["cls_token"] + flat["pos_embed"][:, :1] if with_cls else None
    regs = flat["register_tokens"] if with_regs else None
    fn = (flat["norm.weight"], flat["norm.bias"]) if final_norm else None
    return hand_vit_patches(sd, img, 16, pos, cls, regs, depth=4, final_norm=fn)


@pytest.fixture(scope="module")
def dinov2_teacher(tmp_path_factory):
    """A DINOv2 teacher checkpoint (4 blocks in 2 chunks, 4 registers, patch 14, heads), its flattened state dict,
    and an image at the 4x4 grid."""
    torch.manual_seed(0)
    ckpt, flat = dinov2_checkpoint()
    src = saved(ckpt, tmp_path_factory.mktemp("dinov2") / "dinov2_teacher.pth")
    return src, flat, image(GRID)


@pytest.fixture(scope="module")
def dinov2_to_d2(dinov2_teacher):
    src, _, _ = dinov2_teacher
    return convert_logged(src.parent, src, "detectron2", "--grid", "4", "4", "--drop-registers", "--num-heads", "2")


@pytest.fixture(scope="module")
def dinov2_to_timm(dinov2_teacher):
    src, _, _ = dinov2_teacher
    dst, _ = convert_logged(src.parent, src, "timm", "--grid", "4", "4", "--num-heads", "2")  # registers kept
    return dst


@needs_d2
def test_dinov2_conversion_log_names_the_detected_format(dinov2_to_d2):
    _, out = dinov2_to_d2
    assert "format: dinov2" in out


@needs_d2
def test_dinov2_conversion_log_lists_the_dropped_heads_mask_token_and_final_norm(dinov2_to_d2):
    _, out = dinov2_to_d2
    assert "dino_head.mlp.0.weight" in out and "mask_token: training-only" in out
    assert "norm.weight" in out


@needs_d2
def test_dinov2_conversion_log_says_chunks_were_flattened_and_the_patch_kernel_resampled(dinov2_to_d2):
    _, out = dinov2_to_d2
    assert "flattened" in out and "resampled" in out


@needs_d2
def test_dinov2_to_detectron2_matches_the_source_without_cls_registers_or_final_norm(dinov2_teacher, dinov2_to_d2):
    _, flat, img = dinov2_teacher
    d2, _ = dinov2_to_d2
    ref = dinov2_reference(flat, img, GRID, False, False, False)
    assert max_diff(d2_features(d2, img), ref) <= TOL


@needs_mmseg
def test_dinov2_to_mmseg_matches_the_source_with_cls_and_final_norm_without_registers(dinov2_teacher):
    src, flat, img = dinov2_teacher
    mm, _ = convert_logged(src.parent, src, "mmseg", "--grid", "4", "4", "--drop-registers", "--num-heads", "2")
    ref = dinov2_reference(flat, img, GRID, True, False, True)
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


def test_dinov2_to_timm_matches_the_full_source_registers_included(dinov2_teacher, dinov2_to_timm):
    _, flat, img = dinov2_teacher
    ref = dinov2_reference(flat, img, GRID, True, True, True)
    assert max_diff(timm_features(dinov2_to_timm, img), ref) <= TOL


def test_dinov2_to_timm_records_the_kept_registers_in_meta(dinov2_to_timm):
    assert torch.load(dinov2_to_timm, weights_only=True)["meta"]["num_register_tokens"] == 4
