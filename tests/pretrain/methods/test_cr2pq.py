"""CR2PQ (pretrain/methods/cr2pq.py, docs/cr2pq.md): the batch, the teacher grid, the loss against a computation
assembled by hand, gradients, the export with its RoPE metadata, the recipes, and the tiny config end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pretrain.data.relative_coords import listing1_coords
from pretrain.engine.checkpoint import latest_checkpoint
from pretrain.engine.config import load_config
from pretrain.engine.train import build_dataset, train
from pretrain.export import load_backbone
from pretrain.methods import build_method, method_class
from pretrain.models.rope import grid_coords
from tests.support.paths import REPO
from tests.support.tiny import tiny_overrides
from toydata import make_toy_images


def _overrides(images: str, out: str, **extra) -> list[str]:
    """A CR2PQ run on 32-px views with 8-px patches (view A 4 x 4) and a random ResNet-18 teacher cut at its layer2
    (stride 8: view B 4 x 4 x 128)."""
    base = {
        "method": "cr2pq",
        "pos_field.enabled": "false",
        "model.patch_size": 8,
        "crops.global_scale": "[0.2,1.0]",
        "crops.photometric": "true",
        "cr2pq.teacher_name": "resnet18",
        "cr2pq.teacher_init": "random",
        "cr2pq.teacher_stage": 2,
        "cr2pq.decoder_dim": 16,
        "cr2pq.decoder_heads": 2,
        "cr2pq.projector_hidden_dim": 16,
        "optim.freeze_last_layer_epochs": 0,
    }
    return tiny_overrides(images, out, **dict(base, **extra))


def _batch(cfg, n: int = 2):
    ds, collate = build_dataset(cfg), method_class("cr2pq").build_collator(cfg)
    return collate([ds[i] for i in range(n)])


# ------------------------------------------------------------------------------------------- batch and grids
def test_the_batch_holds_both_views_with_their_boxes_and_flips(toy_images):
    batch = _batch(load_config([], _overrides(toy_images, "unused")), 3)
    assert batch["view_a"].shape == batch["view_b"].shape == (3, 3, 32, 32)
    assert batch["boxes"].shape == (3, 2, 4) and batch["flips"].shape == (3, 2) and batch["flips"].dtype == torch.bool
    assert not torch.equal(batch["view_a"], batch["view_b"])


@pytest.mark.parametrize(("stage", "grid", "width"), [(2, (4, 4), 128), (3, (2, 2), 256), (0, (1, 1), 512)])
def test_view_b_grid_and_the_prediction_width_follow_the_teacher(toy_images, stage, grid, width):
    m = build_method(load_config([], _overrides(toy_images, "unused", **{"cr2pq.teacher_stage": stage})))
    assert m.grid_a == (4, 4) and m.grid_b == grid and m.decoder.pred.out_features == width
    assert m.predict(torch.zeros(1, 3, 32, 32), torch.zeros(1, grid[0] * grid[1], 2))["z"].shape[1:] == (
        grid[0] * grid[1],
        width,
    )


def test_the_student_encoder_has_rope_in_every_block_and_no_additive_position(toy_images):
    m = build_method(load_config([], _overrides(toy_images, "unused")))
    arch = m.encoder.cfg
    assert arch.rope and arch.pos_embed_type == "none" and not arch.pos_field and arch.rope_coords == "grid"
    assert not any("pos_embed" in n or "pos_field" in n for n, _ in m.encoder.named_parameters())


def test_cr2pq_refuses_the_position_field(toy_images):
    with pytest.raises(ValueError, match="pos_field.enabled=false"):
        build_method(load_config([], _overrides(toy_images, "unused", **{"pos_field.enabled": "true"})))


# ------------------------------------------------------------------------------------------- the loss
def _by_hand(m, batch) -> dict:
    """The loss assembled from the parts: Listing 1 coordinates (no flips), the teacher's layer2 map read
    row-major, the squared distances summed over channels and averaged, lambda 0.5 on the global term."""
    coords = []
    for a, b in batch["boxes"].tolist():
        p_a = (a[1], a[0], a[3] - a[1], a[2] - a[0])  # (top, left, height, width)
        p_b = (b[1], b[0], b[3] - b[1], b[2] - b[0])
        coords.append(listing1_coords(p_a, p_b, 4, 4).float())
    h_a = m.encoder(batch["view_a"])["patch"]
    h_b = m.cross_attention(h_a, grid_coords(4, 4)[None], torch.stack(coords))
    z = m.decoder(h_b)
    fmap = m.teacher.model.forward_intermediates(batch["view_b"], indices=[2], intermediates_only=True)[0]
    target = fmap.permute(0, 2, 3, 1).reshape(fmap.shape[0], 16, -1)
    patch = ((z - target) ** 2).sum(-1).mean()
    glob = ((m.projector(h_b.mean(1)) - target.mean(1)) ** 2).sum(-1).mean()
    return {"loss": patch + 0.5 * glob, "patch_loss": patch, "global_loss": glob}


def test_the_method_loss_matches_the_loss_assembled_by_hand(toy_images):
    cfg = load_config([], _overrides(toy_images, "unused", **{"cr2pq.flip_prob": 0.0}))
    batch = _batch(cfg, 3)
    m = build_method(cfg).eval()
    with torch.no_grad():
        ours, hand = m(batch, {}), _by_hand(m, batch)
    for key in ("loss", "patch_loss", "global_loss"):
        assert ours[key].item() == pytest.approx(hand[key].item(), rel=1e-5)
    assert hand["global_loss"].item() > 0 and hand["patch_loss"].item() > 0


def test_p_1_and_lambda_change_the_loss_as_written(toy_images):
    cfg = load_config([], _overrides(toy_images, "unused", **{"cr2pq.loss_p": 1.0, "cr2pq.global_weight": 2.0}))
    batch = _batch(cfg)
    m = build_method(cfg).eval()
    with torch.no_grad():
        out = m(batch, {})
        target = m.teacher(batch["view_b"])
        pred = m.predict(batch["view_a"], m.view_b_coords(batch["boxes"], batch["flips"]))
    assert out["patch_loss"].item() == pytest.approx((pred["z"] - target).abs().sum(-1).mean().item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["patch_loss"].item() + 2 * out["global_loss"].item(), rel=1e-6)


def test_the_encoder_pooling_switch_feeds_the_projector_view_a_tokens(toy_images):
    cfg = load_config([], _overrides(toy_images, "unused", **{"cr2pq.global_tokens": "encoder"}))
    batch = _batch(cfg)
    m = build_method(cfg).eval()
    with torch.no_grad():
        out = m(batch, {})
        target = m.teacher(batch["view_b"]).mean(1)
        expected = ((m.projector(m.encoder(batch["view_a"])["patch"].mean(1)) - target) ** 2).sum(-1).mean()
    assert out["global_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_every_trainable_parameter_gets_a_gradient_and_the_teacher_none(toy_images):
    cfg = load_config([], _overrides(toy_images, "unused"))
    m = build_method(cfg)
    m(_batch(cfg, 4), {})["loss"].backward()
    trainable = {id(p) for p in m.trainable_modules().parameters()}
    assert [n for n, p in m.named_parameters() if id(p) in trainable and p.grad is None] == []  # DDP needs each
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert not any(n.startswith("teacher") for n, _ in m.trainable_modules().named_parameters())


# ------------------------------------------------------------------------------------------- recipes
RECIPES = {e: os.path.join(REPO, f"configs/pretrain/cr2pq_vits16_{e}ep.yaml") for e in (100, 200, 300)}
VITB = os.path.join(REPO, "configs/pretrain/cr2pq_vitb16_300ep.yaml")
WEIGHTS = "cr2pq.teacher_weights=dino_resnet50_pretrain.pth"


@pytest.mark.parametrize("epochs", sorted(RECIPES))
def test_the_vits16_recipes_scale_175e_4_linearly_to_a_2048_batch_after_40_warmup_epochs(epochs):
    cfg = load_config([RECIPES[epochs]], ["train.data=x", WEIGHTS], world_size=32)
    assert cfg.method == "cr2pq" and cfg.model.arch == "vit_small" and cfg.model.patch_size == 16
    assert cfg.optim.epochs == epochs and cfg.optim.warmup_epochs == 40
    assert cfg.optim.lr == pytest.approx(1.75e-4 * 2048 / 256)
    assert cfg.cr2pq.teacher_name == "resnet50" and cfg.cr2pq.global_weight == 0.5 and cfg.cr2pq.loss_p == 2.0


def test_the_vitb16_recipe_uses_base_lr_15e_4():
    cfg = load_config([VITB], ["train.data=x", WEIGHTS], world_size=32)
    assert cfg.model.arch == "vit_base" and cfg.optim.lr == pytest.approx(1.5e-4 * 2048 / 256)


def test_a_recipe_without_the_teacher_weights_is_an_error_naming_the_key():
    cfg = load_config([RECIPES[300]], ["train.data=x", "model.arch=vit_pico"])
    with pytest.raises(ValueError, match="cr2pq.teacher_weights"):
        build_method(cfg)


# ------------------------------------------------------------------------------------------- the engine, end to end
@pytest.fixture(scope="module")
def short_run(toy_images, tmp_path_factory):
    """3 iterations through the engine: (result, output folder)."""
    out = str(tmp_path_factory.mktemp("cr2pq") / "run")
    return train(load_config([], _overrides(toy_images, out, **{"optim.epochs": 1}))), out


def test_the_export_records_the_rope_and_rebuilds_the_trained_encoder(short_run):
    result, out = short_run
    backbone, meta = load_backbone(result["backbone"])
    arch = meta["arch"]
    assert meta["method"] == "cr2pq" and arch["rope"] and arch["pos_embed_type"] == "none"
    assert (arch["rope_base"], arch["rope_rule"], arch["rope_coords"]) == (10000.0, "axial", "grid")
    positions = meta["positions"]
    assert (positions["kind"], positions["rule"], positions["base"], positions["coords"]) == (
        "rope",
        "axial",
        10000.0,
        "grid",
    )
    state = torch.load(latest_checkpoint(out), weights_only=True)["model"]
    assert all(torch.equal(v, state[f"encoder.{k}"]) for k, v in backbone.state_dict().items())


def test_the_cross_attention_decoder_and_projector_are_not_exported(short_run):
    result, out = short_run
    exported = torch.load(result["backbone"], weights_only=True)["model"]
    state = torch.load(latest_checkpoint(out), weights_only=True)["model"]
    heads = [k for k in state if k.split(".")[0] in ("cross_attention", "decoder", "projector")]
    assert heads and not any(k.startswith(("cross_attention", "decoder", "projector", "teacher")) for k in exported)
    assert sorted(os.listdir(out)).count("backbone.pth") == 1 and not [f for f in os.listdir(out) if "head" in f]


def test_the_run_logs_both_loss_terms_every_iteration(short_run):
    _, out = short_run
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    logged = [r for r in rows if "patch_loss" in r]
    assert len(logged) == 3 and all(r["loss"] > r["patch_loss"] > 0 and r["global_loss"] > 0 for r in logged)


@pytest.mark.slow
def test_the_tiny_config_trains_on_the_toy_images_with_a_falling_loss_and_a_loadable_export(tmp_path):
    images = str(tmp_path / "images")
    make_toy_images(images)  # the default toy images, as tools/make_toy_data.py writes them
    out = str(tmp_path / "run")
    cfg = load_config(
        [os.path.join(REPO, "configs/pretrain/cr2pq_tiny.yaml")],
        # the first 60 of its 320 iterations: the loss falls from 341 to about 113 by iteration 41 and then stays
        # flat (benchmarks/RESULTS.md, "CR2PQ tiny run")
        [f"train.data={images}", f"train.output_dir={out}", "train.max_iterations=60", "train.log_every=10"],
    )
    result = train(cfg)
    losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl")) if '"loss"' in line]
    assert result["iteration"] == 59 and len(losses) == 7
    assert sum(losses[-2:]) / 2 < 0.5 * losses[0], losses
    backbone, meta = load_backbone(result["backbone"])
    assert meta["arch"]["rope"] and backbone(torch.zeros(1, 3, 96, 96))["patch"].shape == (1, 36, 96)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(toy_images, tmp_path):
    def run(out, *extra):
        over = _overrides(toy_images, str(out), **{"optim.epochs": 2, "train.checkpoint_every": 3})
        return train(load_config([], over + list(extra)))

    straight = run(tmp_path / "straight")
    run(tmp_path / "resumed", "train.max_iterations=3")
    resumed = run(tmp_path / "resumed")
    a = torch.load(straight["backbone"], weights_only=True)["model"]
    b = torch.load(resumed["backbone"], weights_only=True)["model"]
    assert resumed["iteration"] == 5 and all(torch.equal(a[k], b[k]) for k in a)
