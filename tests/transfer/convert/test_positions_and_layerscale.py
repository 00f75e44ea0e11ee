"""Materialised positions and LayerScale folding against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.export import export_backbone
from tests.transfer.convert.references import (
    HEADS,
    D,
    bilinear_field,
    convert,
    dinov2_checkpoint,
    hand_blocks,
    mae_checkpoint,
    max_diff,
    ours_model,
)
from transfer.convert.canonical import fold_layerscale, patch_pos_at
from transfer.convert.readers import ReadOptions, read_checkpoint

# position materialising and LayerScale folding


GRIDS = [(5, 7), (2, 2), (8, 3)]
with_grid = pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")


@pytest.fixture(scope="module")
def field_model_and_written(tmp_path_factory):
    """Our ViT with a 3x4 position field, and the ``pos_embed`` its timm conversion writes at each grid."""
    tmp = tmp_path_factory.mktemp("field")
    torch.manual_seed(0)
    model = ours_model(field=True, field_size=(3, 4))
    src = tmp / "backbone.pth"
    export_backbone(model, src)
    written = {}
    for grid in GRIDS:
        dst = convert(tmp, src, "timm", "--grid", *map(str, grid), name=f"t{grid}.pth")
        written[grid] = torch.load(dst, weights_only=True)["state_dict"]["pos_embed"]
    return model, written


@with_grid
def test_materialised_pos_embed_has_a_cls_slot_and_one_row_per_patch(field_model_and_written, grid):
    _, written = field_model_and_written
    assert written[grid].shape == (1, 1 + grid[0] * grid[1], D)


@with_grid
def test_materialised_pos_embed_puts_the_cls_position_first(field_model_and_written, grid):
    model, written = field_model_and_written
    assert torch.equal(written[grid][:, :1], model.cls_pos_embed.detach())


@with_grid
def test_materialised_field_equals_the_models_own_sampling_at_the_grid(field_model_and_written, grid):
    model, written = field_model_and_written
    with torch.no_grad():
        direct = model.pos_field(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, grid)
    assert max_diff(written[grid][:, 1:], direct) <= 1e-6


@with_grid
def test_materialised_field_equals_hand_written_bilinear_sampling(field_model_and_written, grid):
    model, written = field_model_and_written
    assert max_diff(written[grid][:, 1:], bilinear_field(model.pos_field.field.detach(), grid)) <= 1e-5


@pytest.fixture(scope="module")
def mae_3x3_canonical():
    torch.manual_seed(0)
    c, _ = read_checkpoint(mae_checkpoint(n=3)[0], ReadOptions(num_heads=2))
    return c


def test_pos_embed_grid_is_resized_once_bicubic_to_another_grid(mae_3x3_canonical):
    c = mae_3x3_canonical
    want = F.interpolate(c.pos_grid, size=(5, 4), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert max_diff(patch_pos_at(c, (5, 4)), want) <= 1e-6


def test_pos_embed_grid_is_left_untouched_at_its_own_grid(mae_3x3_canonical):
    c = mae_3x3_canonical
    assert torch.equal(patch_pos_at(c, (3, 3)), c.pos_grid.flatten(2).transpose(1, 2))


@pytest.fixture(scope="module")
def layerscale_and_folded():
    torch.manual_seed(0)
    ckpt, _ = dinov2_checkpoint()
    c, _ = read_checkpoint(ckpt, ReadOptions(num_heads=2))
    return c, fold_layerscale(c)


def test_folding_layerscale_marks_the_result_as_folded(layerscale_and_folded):
    c, folded = layerscale_and_folded
    assert c.has_layerscale and not folded.has_layerscale and folded.layerscale_folded


def test_folding_layerscale_leaves_no_gamma_tensors(layerscale_and_folded):
    _, folded = layerscale_and_folded
    assert not any("ls1" in k or "ls2" in k for k in folded.state)


def test_folded_blocks_compute_exactly_what_the_layerscale_blocks_do(layerscale_and_folded):
    c, folded = layerscale_and_folded
    x = torch.randn(2, 10, D)
    assert max_diff(hand_blocks(c.state, x, 4, HEADS), hand_blocks(folded.state, x, 4, HEADS)) <= 1e-5


def test_folding_scales_the_attention_proj_rows_by_ls1(layerscale_and_folded):
    c, folded = layerscale_and_folded
    g = c.state["blocks.2.ls1.gamma"]
    assert torch.allclose(folded.state["blocks.2.attn.proj.weight"], c.state["blocks.2.attn.proj.weight"] * g[:, None])


def test_folding_scales_the_mlp_output_bias_by_ls2(layerscale_and_folded):
    c, folded = layerscale_and_folded
    assert torch.allclose(
        folded.state["blocks.2.mlp.fc2.bias"], c.state["blocks.2.mlp.fc2.bias"] * c.state["blocks.2.ls2.gamma"]
    )


def test_folding_leaves_the_other_tensors_unchanged(layerscale_and_folded):
    c, folded = layerscale_and_folded
    assert torch.equal(folded.state["blocks.2.mlp.fc1.weight"], c.state["blocks.2.mlp.fc1.weight"])
