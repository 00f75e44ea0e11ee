"""Parameter groups (weight decay rules, last layers) and gradient clipping."""

import math

import pytest
import torch
from torch import nn

from pretrain.engine.config import load_config
from pretrain.engine.optim import build_optimizer, clip_gradients, param_groups
from pretrain.methods import IntertwinedDistillation
from tests.support.tiny import short_run_overrides, tiny_overrides


@pytest.fixture(scope="module")
def former_rule():
    """The tiny config with the former weight-decay rule, its method and the student's parameter groups."""
    cfg = load_config([], tiny_overrides("x", "y", **{"optim.decay_tokens_and_positions": "false"}))
    model = IntertwinedDistillation(cfg)
    return cfg, model, param_groups(model.student, decay_tokens_and_positions=False)


def test_former_rule_exempts_tokens_field_norms_biases_and_layerscale(former_rule):
    _, _, groups = former_rule
    no_wd = {n for g in groups if g["wd_mult"] == 0 for n in g["names"]}
    for name in (
        "backbone.pos_field.field",
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.posmask_token",
        "backbone.cls_pos_embed",
        "backbone.blocks.0.norm1.weight",
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.0.ls1.gamma",
    ):
        assert name in no_wd, name


def test_former_rule_decays_the_weight_matrices(former_rule):
    _, _, groups = former_rule
    wd = {n for g in groups if g["wd_mult"] == 1 for n in g["names"]}
    assert "backbone.blocks.0.attn.qkv.weight" in wd and "dino_head.mlp.0.weight" in wd


def test_exactly_the_last_layers_of_the_three_heads_are_flagged(former_rule):
    _, _, groups = former_rule
    last = {n for g in groups if g["is_last_layer"] for n in g["names"]}
    assert last == {"dino_head.last_layer.weight", "ibot_head.last_layer.weight", "pos_head.last_layer.weight"}


def test_the_optimizer_builds_under_the_former_rule(former_rule):
    cfg, model, _ = former_rule
    build_optimizer(model.student, cfg)


def _two_modules_with_grads(huge: float):
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    for m, scale in ((a, huge), (b, 1.0)):
        for p in m.parameters():
            p.grad = torch.full_like(p, scale * 0.01)
    return {"backbone": a, "dino_head": b}


@pytest.fixture
def per_module_clipped():
    """A backbone with a huge gradient and a head with a small one, clipped per module to 3: (modules, the head's
    gradients before clipping, the returned norms)."""
    mods = _two_modules_with_grads(huge=1e6)
    before = [p.grad.clone() for p in mods["dino_head"].parameters()]
    norms = clip_gradients(mods, 3.0, per_module=True)
    return mods, before, norms


def test_per_module_clipping_leaves_a_module_below_the_limit_untouched(per_module_clipped):
    mods, before, _ = per_module_clipped
    for g, p in zip(before, mods["dino_head"].parameters()):
        assert torch.equal(p.grad, g)  # its own norm 0.2 < 3: untouched


def test_per_module_clipping_brings_a_module_above_the_limit_to_the_limit(per_module_clipped):
    mods, _, _ = per_module_clipped
    clipped = torch.nn.utils.get_total_norm([p.grad for p in mods["backbone"].parameters()])
    assert math.isclose(float(clipped), 3.0, rel_tol=1e-4)


def test_clipping_returns_each_module_norm_before_clipping(per_module_clipped):
    _, _, norms = per_module_clipped
    assert math.isclose(norms["dino_head"], 0.01 * math.sqrt(20), rel_tol=1e-5)


def test_the_total_norm_is_the_euclidean_sum_of_the_module_norms(per_module_clipped):
    _, _, norms = per_module_clipped
    assert math.isclose(norms["total"], math.hypot(norms["backbone"], norms["dino_head"]), rel_tol=1e-9)


@pytest.fixture
def jointly_clipped():
    mods = _two_modules_with_grads(huge=1e6)
    return mods, clip_gradients(mods, 3.0, per_module=False)


def test_joint_clipping_scales_every_module_by_one_factor(jointly_clipped):
    mods, norms = jointly_clipped
    factor = 3.0 / norms["total"]
    head = mods["dino_head"].weight.grad
    assert torch.allclose(head, torch.full_like(head, 0.01 * factor), rtol=1e-4)


def test_under_joint_clipping_a_huge_backbone_gradient_starves_the_head(jointly_clipped):
    mods, _ = jointly_clipped
    assert mods["dino_head"].weight.grad.abs().max() < 1e-6


def _exempt(cfg):
    groups = param_groups(IntertwinedDistillation(cfg).student, bool(cfg.optim.decay_tokens_and_positions))
    return {n for g in groups if g["wd_mult"] == 0 for n in g["names"]}


@pytest.fixture(scope="module")
def dinov2_exempt():
    """Names without weight decay under the DINOv2 rule, with a register token and a learned head gain."""
    return _exempt(
        load_config([], short_run_overrides(**{"model.num_register_tokens": 1, "heads.last_layer_gain": "learned"}))
    )


def test_dinov2_rule_decays_the_learned_head_gain(dinov2_exempt):
    assert "dino_head.last_layer_gain" not in dinov2_exempt  # DINOv2 decays its weight_g


def test_dinov2_rule_exempts_nothing_but_biases_norms_and_layerscale(dinov2_exempt):
    assert all(n.endswith(".bias") or "norm" in n or ".gamma" in n for n in dinov2_exempt), sorted(dinov2_exempt)


def test_dinov2_rule_exempts_the_biases_norms_and_layerscale_of_backbone_and_heads(dinov2_exempt):
    assert {
        "backbone.blocks.0.ls1.gamma",
        "backbone.blocks.1.norm2.weight",
        "backbone.norm.bias",
        "dino_head.mlp.0.bias",
    } <= dinov2_exempt


def test_dinov2_rule_decays_the_tokens_and_the_position_field(dinov2_exempt):
    for decayed in (
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.posmask_token",
        "backbone.reg_token",
        "backbone.cls_pos_embed",
        "backbone.pos_field.field",
    ):
        assert decayed not in dinov2_exempt, decayed


@pytest.fixture(scope="module")
def former_exempt_field_off():
    """Names without weight decay under the former rule, with the position field off (a learned pos_embed)."""
    return _exempt(
        load_config(
            [], short_run_overrides(**{"optim.decay_tokens_and_positions": "false", "pos_field.enabled": "false"})
        )
    )


def test_former_rule_exempts_the_tokens_pos_embed_and_layerscale(former_exempt_field_off):
    assert {
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.posmask_token",
        "backbone.pos_embed",
        "backbone.blocks.0.ls1.gamma",
    } <= former_exempt_field_off


def test_former_rule_with_the_field_off_still_decays_the_weight_matrices(former_exempt_field_off):
    assert "backbone.blocks.0.attn.qkv.weight" not in former_exempt_field_off
