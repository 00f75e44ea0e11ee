"""Materialised positions and LayerScale folding against direct computations."""

from __future__ import annotations

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


def test_materialised_field_equals_direct_sampling_and_hand_bilinear(tmp_path):
    model = ours_model(field=True, field_size=(3, 4))
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    for grid in [(5, 7), (2, 2), (8, 3)]:
        dst = convert(tmp_path, src, "timm", "--grid", *map(str, grid), name=f"t{grid}.pth")
        written = torch.load(dst, weights_only=True)["state_dict"]["pos_embed"]
        assert written.shape == (1, 1 + grid[0] * grid[1], D)
        assert torch.equal(written[:, :1], model.cls_pos_embed.detach())  # CLS slot first
        patch = written[:, 1:]
        with torch.no_grad():
            direct = model.pos_field(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, grid)
        assert max_diff(patch, direct) <= 1e-6
        assert max_diff(patch, bilinear_field(model.pos_field.field.detach(), grid)) <= 1e-5


def test_pos_embed_grid_resized_once_bicubic():
    c, _ = read_checkpoint(mae_checkpoint(n=3)[0], ReadOptions(num_heads=2))
    pe = c.pos_grid
    want = F.interpolate(pe, size=(5, 4), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert max_diff(patch_pos_at(c, (5, 4)), want) <= 1e-6
    assert torch.equal(patch_pos_at(c, (3, 3)), pe.flatten(2).transpose(1, 2))  # same grid: untouched


def test_layerscale_folding_is_exact():
    ckpt, flat = dinov2_checkpoint()
    c, _ = read_checkpoint(ckpt, ReadOptions(num_heads=2))
    folded = fold_layerscale(c)
    assert c.has_layerscale and not folded.has_layerscale and folded.layerscale_folded
    assert not any("ls1" in k or "ls2" in k for k in folded.state)
    x = torch.randn(2, 10, D)
    assert max_diff(hand_blocks(c.state, x, 4, HEADS), hand_blocks(folded.state, x, 4, HEADS)) <= 1e-5
    # the proj rows are scaled, nothing else changed
    g = c.state["blocks.2.ls1.gamma"]
    assert torch.allclose(folded.state["blocks.2.attn.proj.weight"], c.state["blocks.2.attn.proj.weight"] * g[:, None])
    assert torch.allclose(
        folded.state["blocks.2.mlp.fc2.bias"], c.state["blocks.2.mlp.fc2.bias"] * c.state["blocks.2.ls2.gamma"]
    )
    assert torch.equal(folded.state["blocks.2.mlp.fc1.weight"], c.state["blocks.2.mlp.fc1.weight"])
