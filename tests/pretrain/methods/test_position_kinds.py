"""``pos_field.kind`` (docs/positions.md): the intertwined method with crop-tied sin-cos or RoPE, not the field."""

import os

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.engine.config import ConfigError, load_config
from pretrain.methods import IntertwinedDistillation
from pretrain.models.crop_positions import continuous_sincos_2d, crop_patch_coords
from pretrain.models.from_config import backbone_config
from tests.pretrain.methods.test_intertwined import tiny_batch, tiny_cfg
from tests.support.paths import REPO
from tests.support.runs import read_losses, run_train
from tests.support.tiny import tiny_overrides


def test_each_kind_builds_its_backbone():
    field = backbone_config(tiny_cfg())
    sincos = backbone_config(tiny_cfg(**{"pos_field.kind": "crop_sincos"}))
    rope = backbone_config(tiny_cfg(**{"pos_field.kind": "crop_rope", "pos_field.rope_base": 100.0}))
    assert field.pos_field and not field.rope
    assert (sincos.pos_field, sincos.pos_embed_type, sincos.pos_field_size) == (False, "crop_sincos", [8, 8])
    assert (rope.pos_field, rope.pos_embed_type, rope.rope, rope.rope_base) == (False, "none", True, 100.0)


@pytest.mark.parametrize("kind", ["crop_sincos", "crop_rope"])
def test_a_step_with_each_kind_gives_finite_terms_and_gradients(kind):
    torch.manual_seed(0)
    model = IntertwinedDistillation(tiny_cfg(**{"pos_field.kind": kind}))
    pm = torch.zeros(6, 16, dtype=torch.bool)
    pm[:3, :5] = True  # position masking on the first crops
    cm = torch.zeros(6, 16, dtype=torch.bool)
    cm[3:, 4:9] = True
    terms = model(tiny_batch(content=cm, pos=pm), {"teacher_temp": 0.04})
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["pos"] > 0 and terms["ibot"] > 0
    terms["loss"].backward()
    bb = model.student["backbone"]
    assert bb.posmask_token.grad.abs().sum() > 0  # [POSMASK] is used under both kinds
    assert bb.patch_embed.proj.weight.grad.abs().sum() > 0


def test_crop_sincos_positions_are_those_of_the_batch_boxes_and_flips():
    torch.manual_seed(0)
    model = IntertwinedDistillation(tiny_cfg(**{"pos_field.kind": "crop_sincos"}))
    batch = tiny_batch()
    bb = model.student["backbone"]
    pos = bb.patch_pos_embed(6, (4, 4), batch["global_boxes"], batch["global_flips"])
    coords = crop_patch_coords(batch["global_boxes"], batch["global_flips"], (4, 4), (8, 8))
    assert torch.allclose(pos, continuous_sincos_2d(coords, bb.embed_dim))


def test_crop_rope_attention_follows_the_boxes():
    torch.manual_seed(0)
    model = IntertwinedDistillation(tiny_cfg(**{"pos_field.kind": "crop_rope"}))
    bb = model.student["backbone"].eval()
    with torch.no_grad():  # away from the near-uniform attention of the init
        for p in bb.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = tiny_batch()
    x, boxes, flips = batch["global_crops"][:2], batch["global_boxes"][:2], batch["global_flips"][:2]
    a = bb(x, boxes, flips)["patch"]
    assert not torch.allclose(a, bb(x, boxes, ~flips)["patch"], atol=1e-4)  # the flip reaches the rotations


def test_kind_needs_the_crop_tied_coordinates():
    with pytest.raises(ConfigError, match="pos_field.enabled=true"):
        load_config([os.path.join(REPO, "configs/pretrain/tiny_crop_rope.yaml")], ["pos_field.enabled=false"])


@pytest.mark.parametrize(
    "name",
    [
        "tiny_crop_sincos",
        "tiny_crop_rope",
        "ablations/pos_crop_sincos",
        "ablations/pos_crop_rope",
        "vitb16_pos_crop_sincos",
        "vitb16_pos_crop_rope",
    ],
)
def test_the_position_configs_load(name):
    cfg = load_config([os.path.join(REPO, f"configs/pretrain/{name}.yaml")], ["train.data=x"])
    assert cfg.pos_field.kind in ("crop_sincos", "crop_rope") and cfg.pos_field.enabled
    OmegaConf.to_container(cfg)
    backbone_config(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["crop_sincos", "crop_rope"])
def test_a_tiny_run_with_each_kind_lowers_its_loss(tmp_path, kind):
    from tests.support.images import noise_image

    data = tmp_path / "img"
    data.mkdir()
    for i in range(12):
        noise_image(48, 48, seed=i).save(data / f"{i}.png")
    out = tmp_path / "out"
    args = tiny_overrides(str(data), str(out), **{"pos_field.kind": kind, "optim.epochs": 8, "model.patch_size": 8})
    p = run_train(args)
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-3000:]
    losses = list(read_losses(str(out)).values())
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.2, losses
    assert torch.load(out / "backbone.pth", weights_only=True)["meta"]["positions"]["kind"] in ("crop_sincos", "rope")
