"""The position field and the ViT's positions: field sampling per crop box and flip, masks, registers, and the
field-off pos_embed interpolation (docs/method.md §1)."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.engine.config import load_config
from pretrain.methods import IntertwinedDistillation
from pretrain.models import PositionField, ViTConfig, build_vit
from pretrain.models.position_field import interpolate_pos_embed, patch_centres, resize_pos_grid
from tests.support.tiny import short_run_overrides


def field_from_function(fn, dim, h, w):
    """A field whose cell (i, j) holds fn(x, y) at the cell centre, for ``dim`` channels."""
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([fn(xx, yy, c) for c in range(dim)]).float()[None]


def make_field(fn, dim=3, size=(64, 48)):
    pf = PositionField(dim, size)
    with torch.no_grad():
        pf.field.copy_(field_from_function(fn, dim, *size))
    return pf


def linear_fn(x, y, c):
    return (c + 1) * x - 2 * y + 0.25 * c


def smooth_fn(x, y, c):
    return torch.sin(2 * math.pi * x + c) * torch.cos(math.pi * y)


@pytest.mark.parametrize("grid", [(7, 5), (14, 14)])
def test_full_box_reproduces_linear_function_at_patch_centres(grid):
    pf = make_field(linear_fn)
    out = pf(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, grid)[0]  # (N, d)
    gh, gw = grid
    ys = (torch.arange(gh) + 0.5) / gh
    xs = (torch.arange(gw) + 0.5) / gw
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    want = torch.stack([linear_fn(xx, yy, c) for c in range(3)], -1).reshape(-1, 3)
    # bilinear interpolation is exact for a linear function (patch centres lie inside the cell-centre hull)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_full_box_reproduces_smooth_function():
    pf = make_field(smooth_fn, dim=2, size=(256, 256))
    out = pf(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, (16, 16))[0]
    c = (torch.arange(16) + 0.5) / 16
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    want = torch.stack([smooth_fn(xx, yy, k) for k in range(2)], -1).reshape(-1, 2)
    assert (out - want).abs().max() < 2e-4  # bilinear error ~ h^2 |f''| / 8 with h = 1/256


def test_flip_reverses_columns():
    pf = PositionField(8, (50, 50))
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.1, 0.2, 0.7, 0.9]])
    out = pf(box, torch.tensor([False, True]), (6, 5)).reshape(2, 6, 5, 8)
    torch.testing.assert_close(out[1], out[0].flip(1))
    assert (out[1] - out[0]).abs().max() > 1e-3  # the flip changes something


def test_crop_of_crop_equals_composed_box():
    pf = PositionField(4, (50, 50))
    outer = torch.tensor([0.2, 0.1, 0.8, 0.7])
    inner_rel = torch.tensor([0.25, 0.5, 0.75, 1.0])  # inner crop in the outer crop's own coordinates
    w, h = outer[2] - outer[0], outer[3] - outer[1]
    composed = torch.stack(
        [
            outer[0] + inner_rel[0] * w,
            outer[1] + inner_rel[1] * h,
            outer[0] + inner_rel[2] * w,
            outer[1] + inner_rel[3] * h,
        ]
    )
    # patch centres of the inner crop, computed through the outer crop's coordinate frame
    rel_centres = patch_centres(inner_rel[None], None, (4, 4))[0]
    via_outer = torch.stack([outer[0] + rel_centres[..., 0] * w, outer[1] + rel_centres[..., 1] * h], -1)
    g = (via_outer * 2 - 1)[None]
    sampled = F.grid_sample(pf.field, g, mode="bilinear", padding_mode="border", align_corners=False)
    want = sampled[0].permute(1, 2, 0).reshape(-1, 4)
    torch.testing.assert_close(pf(composed[None], None, (4, 4))[0], want, atol=1e-6, rtol=0)


def test_border_padding_outside_virtual_image():
    pf = make_field(linear_fn, dim=1, size=(10, 10))
    out = pf(torch.tensor([[-1.0, -1.0, -0.5, -0.5]]), None, (2, 2))[0]
    torch.testing.assert_close(out, pf.field[0, :, 0, 0].expand(4, 1))  # everything reads the corner cell


def test_gradients_reach_field_and_tokens():
    vit = build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, pos_field_size=[6, 6]))
    x = torch.randn(2, 3, 32, 32)
    cm = torch.zeros(2, 16, dtype=torch.bool)
    pm = torch.zeros(2, 16, dtype=torch.bool)
    cm[0, :3] = True
    pm[1, 5:8] = True
    out = vit(x, torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.3, 1.0, 1.0]]), torch.tensor([True, False]), cm, pm)
    (out["patch"].square().sum() + out["cls"].sum()).backward()
    for name in ("pos_field.field", "mask_token", "posmask_token", "cls_pos_embed"):
        g = dict(vit.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


@pytest.fixture
def masked_tokens():
    """Token sequences of one image, clean and with patch 2 content-masked or position-masked ([MASK] = 3,
    [POSMASK] = -5), and the patch position embeddings."""
    vit = build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, pos_field_size=[6, 6]))
    with torch.no_grad():
        vit.mask_token.fill_(3.0)
        vit.posmask_token.fill_(-5.0)
    x = torch.randn(1, 3, 32, 32)
    m = torch.zeros(1, 16, dtype=torch.bool)
    m[0, 2] = True
    clean, _ = vit.prepare_tokens(x)
    cm, _ = vit.prepare_tokens(x, content_mask=m)
    pm, _ = vit.prepare_tokens(x, pos_mask=m)
    return clean, cm, pm, vit.patch_pos_embed(1, (4, 4))


def test_a_content_mask_replaces_the_patch_content_by_mask_and_keeps_its_position(masked_tokens):
    _, cm, _, pos = masked_tokens
    torch.testing.assert_close(cm[0, 3], 3.0 + pos[0, 2])  # [MASK] content + its position


def test_a_position_mask_replaces_the_patch_position_by_posmask_and_keeps_its_content(masked_tokens):
    clean, _, pm, pos = masked_tokens
    content = clean[0, 1:] - pos[0]
    torch.testing.assert_close(pm[0, 3], content[2] - 5.0)  # its content + [POSMASK]


def test_masks_leave_every_other_token_unchanged(masked_tokens):
    clean, cm, pm, _ = masked_tokens
    unchanged = torch.ones(17, dtype=torch.bool)
    unchanged[3] = False
    torch.testing.assert_close(cm[0, unchanged], clean[0, unchanged])
    torch.testing.assert_close(pm[0, unchanged], clean[0, unchanged])


@pytest.fixture
def field_off_vit():
    return build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, pos_field=False))


def test_field_off_vit_learns_a_pos_embed_for_cls_and_each_patch(field_off_vit):
    assert field_off_vit.pos_embed.shape == (1, 17, 64)


def test_field_off_pos_embed_is_used_as_is_on_its_own_grid(field_off_vit):
    vit = field_off_vit
    torch.testing.assert_close(vit.patch_pos_embed(1, (4, 4)), vit.pos_embed[:, 1:])


def test_field_off_pos_embed_is_resized_bicubically_to_another_grid(field_off_vit):
    vit = field_off_vit
    pe6 = vit.patch_pos_embed(1, (6, 6))
    grid = vit.pos_embed[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 64)
    torch.testing.assert_close(pe6, want)


@pytest.fixture
def vit_with_registers():
    vit = build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, num_register_tokens=3))
    seq, _ = vit.prepare_tokens(torch.randn(2, 3, 32, 32))
    return vit, seq


def test_the_sequence_holds_cls_then_the_registers_then_the_patches(vit_with_registers):
    _, seq = vit_with_registers
    assert seq.shape[1] == 1 + 3 + 16


def test_registers_have_no_position_and_come_after_cls(vit_with_registers):
    vit, seq = vit_with_registers
    torch.testing.assert_close(seq[0, 1:4], vit.reg_token[0])


def test_cls_carries_its_own_position_embedding(vit_with_registers):
    vit, seq = vit_with_registers
    torch.testing.assert_close(seq[0, 0], (vit.cls_token + vit.cls_pos_embed)[0, 0])


M, G = 8, 3  # the learned grid side, the grid side asked for


@pytest.fixture
def dinov2_rule_vit():
    """A field-off ViT on an 8x8 grid resizing its pos_embed by DINOv2's rule, and that grid as an image."""
    torch.manual_seed(0)
    vit = build_vit(
        ViTConfig.from_arch("vit_pico", patch_size=8, img_size=64, pos_field=False, pos_embed_interpolation="dinov2")
    )
    return vit, vit.pos_embed[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)


def test_field_off_pos_embed_follows_dinov2_scale_factor_rule(dinov2_rule_vit):
    vit, grid = dinov2_rule_vit
    # independent: F.interpolate with DINOv2's scale factor (g + 0.1) / M, written out here
    ref = F.interpolate(grid, scale_factor=((G + 0.1) / M, (G + 0.1) / M), mode="bicubic", align_corners=False)
    got = vit.patch_pos_embed(1, (G, G))
    torch.testing.assert_close(got, ref.permute(0, 2, 3, 1).reshape(1, G * G, -1))


def test_the_dinov2_rule_differs_from_the_size_rule(dinov2_rule_vit):
    vit, _ = dinov2_rule_vit
    by_size = interpolate_pos_embed(vit.pos_embed, (G, G), rule="size")
    assert (vit.patch_pos_embed(1, (G, G)) - by_size).abs().max() > 1e-3  # the switch does something


def test_the_dinov2_rule_leaves_the_pos_embed_unchanged_on_its_own_grid(dinov2_rule_vit):
    vit, _ = dinov2_rule_vit
    torch.testing.assert_close(vit.patch_pos_embed(1, (M, M)), vit.pos_embed[:, 1:])


def test_an_unknown_interpolation_rule_is_refused(dinov2_rule_vit):
    _, grid = dinov2_rule_vit
    with pytest.raises(ValueError, match="interpolation"):
        resize_pos_grid(grid, (G, G), rule="bilinear")


def test_pretraining_config_default_is_dinov2_interpolation():
    cfg = load_config([], short_run_overrides(**{"pos_field.enabled": "false"}))
    vit = IntertwinedDistillation(cfg).student["backbone"]
    assert vit.cfg.pos_embed_interpolation == "dinov2"


def test_the_vit_config_default_is_the_size_rule_of_former_checkpoints():
    assert ViTConfig().pos_embed_interpolation == "size"  # what checkpoints without the key were trained with
