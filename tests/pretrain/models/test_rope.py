"""Continuous 2-D RoPE, continuous sin-cos and crop-tied coordinates (docs/positions.md), against hand values."""

import math

import pytest
import torch

from pretrain.models.crop_positions import continuous_sincos_2d, crop_patch_coords
from pretrain.models.position_field import mae_sincos_2d
from pretrain.models.rope import (
    apply_rope,
    apply_rope_after_prefix,
    grid_coords,
    normalized_grid_coords,
    rope_angles,
    rope_frequencies,
)
from pretrain.models.rope_block import rope_attention
from pretrain.models.vit import ViTConfig, build_vit


def rope_vit(**kw):
    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=8, pos_field=False, pos_embed_type="none", rope=True, layerscale=None)
    cfg.update(kw)
    m = build_vit(ViTConfig.from_arch("vit_pico", **cfg)).eval()
    with torch.no_grad():  # weights far from the init, so that every path matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_frequencies_follow_the_axial_rule_and_the_named_alternatives():
    # head_dim 16: D/4 = 4 frequencies per axis
    assert torch.allclose(rope_frequencies(16), torch.tensor([1.0, 0.1, 0.01, 0.001]))
    assert torch.allclose(
        rope_frequencies(16, rule="cr2pq_printed"), torch.tensor([10000.0 ** (-t / 8) for t in range(4)])
    )
    dinov3 = torch.tensor([2 * math.pi / 100.0 ** (2 * t / 8) for t in range(4)])
    assert torch.allclose(rope_frequencies(16, base=100.0, rule="dinov3"), dinov3)
    with pytest.raises(ValueError):
        rope_frequencies(18)


def test_angles_put_the_row_on_the_first_half_and_the_column_on_the_second():
    freqs = torch.tensor([1.0, 0.5])
    a = rope_angles(torch.tensor([[2.0, 3.0]]), freqs)
    assert torch.allclose(a, torch.tensor([[2.0, 1.0, 3.0, 1.5]]))


def test_grid_coords_are_row_major_rows_then_columns():
    assert grid_coords(2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert torch.allclose(
        normalized_grid_coords(2, 4)[:4], torch.tensor([[-0.5, -0.75], [-0.5, -0.25], [-0.5, 0.25], [-0.5, 0.75]])
    )


def test_apply_rope_equals_a_complex_multiplication():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g)
    angles = torch.randn(2, 1, 5, 4, generator=g)
    z = torch.view_as_complex(x.reshape(2, 3, 5, 4, 2).contiguous())
    expected = torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).reshape(2, 3, 5, 8)
    assert torch.allclose(apply_rope(x, angles), expected, atol=1e-6)
    assert apply_rope(x.half(), angles).dtype == torch.float16


def test_the_dot_product_depends_only_on_the_coordinate_difference():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 6, 16, generator=g), torch.randn(1, 1, 6, 16, generator=g)
    freqs = rope_frequencies(16)
    coords = torch.rand(6, 2, generator=g) * 10
    shifted = coords + torch.tensor([0.37, -2.6])

    def scores(c):
        a = rope_angles(c, freqs)[None, None]
        return apply_rope(q, a) @ apply_rope(k, a).transpose(-1, -2)

    assert torch.allclose(scores(coords), scores(shifted), atol=1e-4)
    assert not torch.allclose(scores(coords), scores(coords * 1.5), atol=1e-2)  # a rescaling is not a shift


def test_prefix_tokens_are_left_unrotated():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 5, 8, generator=g)
    angles = torch.rand(1, 1, 3, 4, generator=g) + 0.5
    out = apply_rope_after_prefix(x, angles, 2)
    assert torch.equal(out[:, :, :2], x[:, :, :2])
    assert torch.allclose(out[:, :, 2:], apply_rope(x[:, :, 2:], angles))
    assert not torch.allclose(out[:, :, 2:], x[:, :, 2:])


def test_rope_attention_matches_a_hand_computation_with_unrotated_cls():
    m = rope_vit()
    blk = m.blocks[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 64, generator=g)  # CLS + 4 patches
    angles = rope_angles(torch.rand(2, 4, 2, generator=g) * 5, m.rope_freqs)
    out = rope_attention(blk.attn, x, angles, num_prefix=1)
    a = blk.attn
    q, k, v = a.qkv(x).reshape(2, 5, 3, 2, 32).permute(2, 0, 3, 1, 4).unbind(0)
    zero = torch.zeros(2, 1, 16)
    full = torch.cat([zero, angles], dim=1)[:, None]  # angle 0 = no rotation for CLS
    att = (apply_rope(q, full) @ apply_rope(k, full).transpose(-1, -2) * a.scale).softmax(-1)
    expected = a.proj((att @ v).transpose(1, 2).reshape(2, 5, 64))
    assert torch.allclose(out, expected, atol=1e-5)


def _patch_only_forward(m, x, coords):
    """The ViT's patch tokens through its blocks without prefix tokens, rotated at ``coords``."""
    seq, grid = m.prepare_tokens(x)
    seq = seq[:, m.num_prefix_tokens :]
    angles = m.attention_angles(grid, coords=coords)
    for blk in m.blocks:
        seq = blk(seq, angles, 0)
    return seq


def test_shifting_all_coordinates_of_a_crop_leaves_the_attention_among_patches_unchanged():
    m = rope_vit()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 32, 32, generator=g)
    coords = torch.rand(2, 16, 2, generator=g) * 8
    shift = torch.tensor([[[0.3, -1.7]], [[5.25, 0.5]]])  # one constant per sample, fractional
    base = _patch_only_forward(m, x, coords)
    assert torch.allclose(base, _patch_only_forward(m, x, coords + shift), atol=1e-4)
    assert not torch.allclose(base, _patch_only_forward(m, x, coords * 0.5), atol=1e-3)


def test_unrotated_cls_sees_absolute_coordinates():
    # CLS is not rotated, so it acts as a token at (0, 0): a shift changes the CLS-patch scores (docs/positions.md)
    m = rope_vit()
    x = torch.randn(1, 3, 32, 32)
    coords = grid_coords(4, 4)[None]
    a, b = m(x, coords=coords), m(x, coords=coords + 3.0)
    assert not torch.allclose(a["cls"], b["cls"], atol=1e-3)


def test_default_coordinates_are_the_integer_grid_of_the_input():
    m = rope_vit()
    x = torch.randn(1, 3, 32, 48)
    out = m(x)["patch"]
    assert torch.allclose(out, m(x, coords=grid_coords(4, 6)[None])["patch"], atol=1e-6)
    assert not torch.allclose(out, m(x, coords=grid_coords(4, 6)[None] * 2)["patch"], atol=1e-3)


def test_a_position_masked_patch_is_not_rotated():
    m = rope_vit()
    x = torch.randn(1, 3, 32, 32)
    coords = grid_coords(4, 4)[None].clone()
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True
    a = m(x, pos_mask=mask, coords=coords)
    coords[0, 5] = torch.tensor([13.0, -7.5])  # move only the masked patch
    b = m(x, pos_mask=mask, coords=coords)
    assert torch.allclose(a["patch"], b["patch"], atol=1e-5)
    assert not torch.allclose(a["patch"], m(x, coords=coords)["patch"], atol=1e-3)  # unmasked, it would matter


def test_continuous_sincos_at_the_integer_grid_equals_the_mae_table():
    table = mae_sincos_2d(64, 5, 7)
    assert torch.allclose(continuous_sincos_2d(grid_coords(5, 7), 64), table, atol=1e-6)
    half = continuous_sincos_2d(torch.tensor([[0.0, 0.5]]), 8)  # omega (1, 0.01); col 0.5, row 0
    expected = [math.sin(0.5), math.sin(0.005), math.cos(0.5), math.cos(0.005), 0.0, 0.0, 1.0, 1.0]
    assert torch.allclose(half, torch.tensor([expected]), atol=1e-6)


def test_crop_coordinates_of_a_flipped_scaled_translated_box():
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 1.0, 1.0]])
    flips = torch.tensor([True, False])
    c = crop_patch_coords(boxes, flips, (2, 2), (8, 8))
    # box 0: y centres 0.625, 0.875 -> rows 4.5, 6.5; flipped x centres 0.625, 0.375 -> columns 4.5, 2.5
    assert c[0].tolist() == [[4.5, 4.5], [4.5, 2.5], [6.5, 4.5], [6.5, 2.5]]
    # the whole virtual image at a grid equal to the extent is the integer grid
    assert torch.allclose(crop_patch_coords(boxes[1:], None, (8, 8), (8, 8))[0], grid_coords(8, 8))
    wide = crop_patch_coords(torch.tensor([[0.1, 0.2, 0.5, 0.4]]), None, (1, 2), (10, 20))
    assert torch.allclose(wide, torch.tensor([[[2.5, 3.5], [2.5, 7.5]]]))


def test_crop_sincos_vit_samples_sincos_at_the_crop_coordinates():
    torch.manual_seed(0)
    m = build_vit(
        ViTConfig.from_arch(
            "vit_pico", img_size=32, patch_size=8, pos_field=False, pos_embed_type="crop_sincos", pos_field_size=[8, 8]
        )
    )
    boxes, flips = torch.tensor([[0.25, 0.5, 0.75, 1.0]]), torch.tensor([True])
    pos = m.patch_pos_embed(1, (2, 2), boxes, flips)
    assert torch.allclose(pos, continuous_sincos_2d(crop_patch_coords(boxes, flips, (2, 2), (8, 8)), 64))
    assert torch.allclose(m.patch_pos_embed(1, (8, 8))[0], mae_sincos_2d(64, 8, 8), atol=1e-6)  # no boxes: whole


def test_invalid_rope_configurations_are_refused():
    with pytest.raises(ValueError, match="pos_embed_type='none'"):
        build_vit(ViTConfig.from_arch("vit_pico", rope=True))
    with pytest.raises(ValueError, match="divisible by 4"):
        build_vit(
            ViTConfig.from_arch(
                "vit_pico", embed_dim=36, num_heads=2, pos_field=False, pos_embed_type="none", rope=True
            )
        )
    with pytest.raises(ValueError, match="without positions"):
        build_vit(ViTConfig.from_arch("vit_pico", pos_field=False, pos_embed_type="none"))
