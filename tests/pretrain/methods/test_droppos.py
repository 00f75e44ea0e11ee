"""DropPos (pretrain/methods/droppos.py, docs/droppos.md): targets, weights, masks and loss against hand computations,
and the tiny config through the real engine, export, backbone loader and converter."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from pretrain.engine.checkpoint import latest_checkpoint
from pretrain.engine.config import load_config
from pretrain.engine.train import build_dataset, train
from pretrain.export import load_backbone
from pretrain.methods import build_method, method_class
from pretrain.methods.droppos import (
    DropPos,
    SigmaSchedule,
    anchor_count,
    attentive_weights,
    draw_masks,
    droppos_loss,
    load_droppos_head,
    smoothing_targets,
    visible_count,
    wrong_position_sources,
)
from pretrain.models.position_field import mae_sincos_2d
from tests.support.paths import REPO
from tests.support.tiny import tiny_overrides
from transfer.convert import convert_checkpoint

E = math.exp


def _grid_weights(side: int, sigma: float) -> list[list[float]]:
    """exp(-d2 / sigma^2) between the row-major positions of a side x side grid, by hand."""
    pos = [(k // side, k % side) for k in range(side * side)]
    return [[E(-((ri - rj) ** 2 + (ci - cj) ** 2) / sigma**2) for rj, cj in pos] for ri, ci in pos]


# sums of exp(-d2) over a 3 x 3 grid seen from a corner, an edge and the centre (sigma = 1)
S_CORNER = 1 + 2 * E(-1) + E(-2) + 2 * E(-4) + 2 * E(-5) + E(-8)
S_EDGE = 1 + 3 * E(-1) + 2 * E(-2) + E(-4) + 2 * E(-5)
S_CENTRE = 1 + 4 * E(-1) + 4 * E(-2)


# ------------------------------------------------------------------------------------------- smoothing targets
def test_smoothed_targets_at_sigma_1_on_a_3x3_grid_are_the_hand_values():
    t = smoothing_targets((3, 3), 1.0)
    corner = [1, E(-1), E(-4), E(-1), E(-2), E(-5), E(-4), E(-5), E(-8)]
    assert t[0].tolist() == pytest.approx([v / S_CORNER for v in corner], abs=1e-7)
    assert t[4, 4].item() == pytest.approx(1 / S_CENTRE) and t[4, 0].item() == pytest.approx(E(-2) / S_CENTRE)
    assert t[1, 4].item() == pytest.approx(E(-1) / S_EDGE)


def test_smoothed_targets_at_sigma_1_on_a_2x2_grid_are_the_hand_values():
    s = (1 + E(-1)) ** 2  # every position is a corner: 1 + 2 e^-1 + e^-2
    expected = [[1 / s, E(-1) / s, E(-1) / s, E(-2) / s]]
    assert smoothing_targets((2, 2), 1.0)[:1].tolist() == [pytest.approx(expected[0], abs=1e-7)]


@pytest.mark.parametrize("norm", ["rows", "official_broadcast"])
def test_sigma_zero_gives_one_hot_targets(norm):
    assert torch.equal(smoothing_targets((3, 3), 0.0, norm), torch.eye(9))


def test_sigma_going_to_zero_gives_the_identity():
    assert torch.allclose(smoothing_targets((4, 4), 0.05), torch.eye(16), atol=1e-30)  # exp(-1/0.0025) underflows
    assert smoothing_targets((4, 4), 0.3)[5, 5].item() == pytest.approx(1 / (1 + 4 * E(-1 / 0.09)), rel=1e-6)


@pytest.mark.parametrize(("grid", "sigma"), [((3, 3), 1.0), ((14, 14), 1.0), ((14, 14), 2.0), ((2, 5), 0.7)])
def test_rows_normalisation_sums_every_row_to_one(grid, sigma):
    sums = smoothing_targets(grid, sigma, "rows").double().sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)


def test_official_broadcast_divides_entry_i_j_by_the_sum_of_row_j():
    t = smoothing_targets((3, 3), 1.0, "official_broadcast")
    assert t[0, 4].item() == pytest.approx(E(-2) / S_CENTRE) and t[4, 0].item() == pytest.approx(E(-2) / S_CORNER)
    row0 = (1 + 2 * E(-4) + E(-8)) / S_CORNER + (2 * E(-1) + 2 * E(-5)) / S_EDGE + E(-2) / S_CENTRE
    assert t[0].sum().item() == pytest.approx(row0, rel=1e-6) and abs(row0 - 1) > 0.05  # not a distribution


def test_the_official_square_map_puts_a_row_start_patch_beside_its_flat_neighbours():
    # 96 px / 16 = a 6 x 6 grid; the official code builds its map on (96 // 6)^2 = 16 x 16 and cuts it to 36 x 36,
    # so patch 6 (row 1, column 0) sits at (0, 6) of the map: flat neighbours 5 and 7, not the patch 0 above it
    official = smoothing_targets((6, 6), 1.0, "official_broadcast", index_grid=(16, 16))
    ours = smoothing_targets((6, 6), 1.0, "rows")
    assert official[6, 5] == official[6, 7] > 0.1 and official[6, 0].item() < 1e-10
    assert ours[6, 0] == ours[6, 7] > 0.1 and ours[6, 5].item() < 1e-10


# ------------------------------------------------------------------------------------------- attentive weights
def test_attentive_weights_renormalise_the_cls_softmax_over_the_visible_patches():
    cls = torch.tensor([[1.0, 0.0]])
    patches = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])  # cosines 1, 0, -1
    w = attentive_weights(cls, patches, torch.tensor([[0, 2]]), tau=0.5)
    assert w.tolist() == [pytest.approx([E(2) / (E(2) + E(-2)), E(-2) / (E(2) + E(-2))])]
    w = attentive_weights(cls, patches, torch.tensor([[1, 0]]), tau=0.5)  # the order of ids_keep is kept
    assert w.tolist() == [pytest.approx([1 / (1 + E(2)), E(2) / (1 + E(2))])]


# ------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize(("n", "gamma", "visible"), [(196, 0.75, 49), (196, 0.9, 19), (36, 0.5, 18), (196, 0.0, 196)])
def test_exactly_int_n_times_1_minus_gamma_patches_stay_visible(n, gamma, visible):
    ids_keep, _ = draw_masks(3, n, gamma, 0.75, torch.Generator().manual_seed(0))
    assert visible_count(n, gamma) == visible and ids_keep.shape == (3, visible)
    assert all(len(set(row)) == visible and max(row) < n for row in ids_keep.tolist())  # distinct grid positions


@pytest.mark.parametrize(("gamma_pos", "anchors"), [(0.75, 12), (0.5, 24), (0.25, 36), (1.0, 0)])
def test_exactly_int_v_times_1_minus_gamma_pos_anchors_keep_their_position(gamma_pos, anchors):
    _, dropped = draw_masks(4, 196, 0.75, gamma_pos, torch.Generator().manual_seed(1))
    assert anchor_count(49, gamma_pos) == anchors
    assert (~dropped).sum(1).tolist() == [anchors] * 4


def test_the_collator_draws_the_same_masks_for_the_same_samples(toy_images):
    cfg = load_config([], _overrides(toy_images, "unused"))
    ds, collate = build_dataset(cfg), method_class("droppos").build_collator(cfg)
    a, b = collate([ds[i] for i in range(4)]), collate([ds[i] for i in range(4)])
    other = collate([ds[i] for i in range(4, 8)])
    assert torch.equal(a["ids_keep"], b["ids_keep"]) and torch.equal(a["pos_dropped"], b["pos_dropped"])
    assert not torch.equal(a["ids_keep"], other["ids_keep"])


def test_wrong_pos_sources_permute_the_dropped_slots_among_themselves():
    dropped = torch.tensor([[True, False, True, True, False, True]] * 3)
    src = wrong_position_sources(dropped, torch.Generator().manual_seed(0))
    assert src[:, [1, 4]].tolist() == [[1, 4]] * 3  # anchors keep their own position
    assert all(sorted(row[i] for i in (0, 2, 3, 5)) == [0, 2, 3, 5] for row in src.tolist())


# ------------------------------------------------------------------------------------------- sigma schedule
def test_sigma_decays_linearly_once_per_epoch_by_default():
    s = SigmaSchedule(1.0, 0.0, "epoch", iters_per_epoch=10, epochs=4, total=40)
    assert [s[0], s[9], s[10], s[25], s[39]] == [1.0, 1.0, 0.75, 0.5, 0.25]


def test_sigma_decays_every_iteration_or_stays_constant_as_switched():
    assert SigmaSchedule(2.0, 0.0, "iteration", 10, 4, 40)[30] == pytest.approx(0.5)
    assert SigmaSchedule(2.0, 0.0, "none", 10, 4, 40)[39] == 2.0


# ------------------------------------------------------------------------------------------- the loss
def test_the_loss_matches_an_independent_computation_on_a_2_image_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, generator=g)
    ids_keep = torch.tensor([[2, 0, 3], [1, 3, 0]])
    dropped = torch.tensor([[True, False, True], [True, True, False]])
    attn = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3]])
    w = _grid_weights(2, 1.0)
    num = den = 0.0
    for b in range(2):
        for v in range(3):
            if dropped[b, v]:
                y = int(ids_keep[b, v])
                log_p = [x - math.log(sum(E(o) for o in logits[b, v].tolist())) for x in logits[b, v].tolist()]
                ce = -sum(w[y][j] / sum(w[y]) * log_p[j] for j in range(4))
                num, den = num + attn[b, v].item() * ce, den + attn[b, v].item()
    targets = smoothing_targets((2, 2), 1.0)[ids_keep]
    assert droppos_loss(logits, targets, dropped.float() * attn).item() == pytest.approx(num / den, rel=1e-6)


def _overrides(images: str, out: str, **extra) -> list[str]:
    """A DropPos run on 32-px crops with 8-px patches: a 4 x 4 grid, 4 visible patches of which 1 anchor."""
    base = {
        "method": "droppos",
        "pos_field.enabled": "false",
        "model.patch_size": 8,
        "droppos.decoder_dim": 32,
        "droppos.decoder_heads": 2,
        "crops.global_scale": "[0.2,1.0]",
    }
    return tiny_overrides(images, out, **dict(base, **extra))


def _independent_forward(m: DropPos, images, ids_keep, dropped, sigma: float) -> float:
    """The DropPos loss of ``m`` written out: patches by unfolding, positions and [POSMASK] by slot, the blocks,
    the decoder, cosine affinities of a full forward, hand targets and the weighted mean."""
    enc, dec, p = m.encoder, m.decoder, 8
    b = images.shape[0]
    w = enc.patch_embed.proj.weight
    flat = images.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, 16, -1)
    emb = flat @ w.reshape(w.shape[0], -1).T + enc.patch_embed.proj.bias
    table = enc.pos_embed[0, 1:]

    def run(seq):
        for blk in enc.blocks:
            seq = blk(seq)
        return enc.norm(seq)

    full = run(torch.cat([enc.cls_token.expand(b, -1, -1), emb + table], 1))
    rows = []
    for i in range(b):
        toks = [emb[i, k] + (enc.posmask_token[0] if dr else table[k]) for k, dr in zip(ids_keep[i], dropped[i])]
        rows.append(torch.stack([enc.cls_token[0, 0]] + toks))
    x = dec.embed(run(torch.stack(rows)))
    for blk in dec.blocks:
        x = blk(x)
    logits = dec.pred(dec.norm(x))[:, 1:]
    wts = _grid_weights(4, sigma)
    num = den = 0.0
    for i in range(b):
        cls = full[i, 0]
        aff = [E(float(cls @ full[i, 1 + k] / (cls.norm() * full[i, 1 + k].norm())) / 0.1) for k in range(16)]
        vis = sum(aff[k] for k in ids_keep[i].tolist())
        for v, k in enumerate(ids_keep[i].tolist()):
            if dropped[i, v]:
                log_p = F.log_softmax(logits[i, v].double(), -1).tolist()
                ce = -sum(wts[k][j] / sum(wts[k]) * log_p[j] for j in range(16))
                num, den = num + aff[k] / vis * ce, den + aff[k] / vis
    return num / den


def test_the_method_loss_matches_an_independent_forward_on_a_2_image_batch(toy_images):
    cfg = load_config([], _overrides(toy_images, "unused"))
    ds, collate = build_dataset(cfg), method_class("droppos").build_collator(cfg)
    batch = collate([ds[0], ds[1]])
    m = build_method(cfg)
    with torch.no_grad():
        ours = m(batch, {"sigma": 1.0})["pos_ce"].item()
        hand = _independent_forward(m, batch["images"], batch["ids_keep"], batch["pos_dropped"], 1.0)
    assert batch["pos_dropped"].sum().item() == 6 and ours == pytest.approx(hand, rel=1e-5)


@pytest.mark.parametrize("mask_token_type", ["param", "zeros", "wrong_pos"])
def test_every_parameter_gets_a_gradient_for_each_mask_token_type(toy_images, mask_token_type):
    cfg = load_config([], _overrides(toy_images, "unused", **{"droppos.mask_token_type": mask_token_type}))
    ds, collate = build_dataset(cfg), method_class("droppos").build_collator(cfg)
    m = build_method(cfg)
    m(collate([ds[i] for i in range(4)]), {"sigma": 0.5})["loss"].backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []  # DDP needs every one


def test_the_encoder_positions_are_a_fixed_sincos_buffer_with_a_zero_cls_slot(toy_images):
    m = build_method(load_config([], _overrides(toy_images, "unused")))
    assert "encoder.pos_embed" in dict(m.named_buffers()) and "encoder.pos_embed" not in dict(m.named_parameters())
    assert torch.equal(m.encoder.pos_embed[0, 0], torch.zeros(64))
    assert torch.equal(m.encoder.pos_embed[0, 1:], mae_sincos_2d(64, 4, 4))


def test_the_sincos_table_is_column_then_row_at_integer_positions():
    t = mae_sincos_2d(8, 2, 2)  # omega = (1, 1/100); patch 1 is row 0, column 1
    s, c = math.sin, math.cos
    assert t[1].tolist() == pytest.approx([s(1), s(0.01), c(1), c(0.01), 0, 0, 1, 1])
    assert t[2].tolist() == pytest.approx([0, 0, 1, 1, s(1), s(0.01), c(1), c(0.01)])


def test_droppos_refuses_the_position_field(toy_images):
    cfg = load_config([], _overrides(toy_images, "unused", **{"pos_field.enabled": "true"}))
    with pytest.raises(ValueError, match="pos_field.enabled=false"):
        build_method(cfg)


def test_the_vitb16_recipe_scales_the_base_lr_linearly_to_a_4096_batch():
    cfg = load_config([os.path.join(REPO, "configs/pretrain/droppos_vitb16_800ep.yaml")], ["train.data=x"], 8)
    assert cfg.method == "droppos" and cfg.optim.epochs == 800 and cfg.optim.lr == pytest.approx(1.5e-4 * 16)
    assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.weight_decay == cfg.optim.weight_decay_end == 0.05


# ------------------------------------------------------------------------------------------- the engine, end to end
TINY = os.path.join(REPO, "configs/pretrain/droppos_tiny.yaml")


def _tiny(images: str, out: str, *extra: str):
    base = [f"train.data={images}", f"train.output_dir={out}", "train.num_workers=0", "train.batch_size_per_gpu=8"]
    return load_config([TINY], base + ["train.max_iterations=4", "train.log_every=1", *extra])


@pytest.fixture(scope="module")
def tiny_run(toy_images, tmp_path_factory):
    """4 iterations of configs/pretrain/droppos_tiny.yaml through the engine: (result, output folder)."""
    out = str(tmp_path_factory.mktemp("droppos") / "run")
    return train(_tiny(toy_images, out)), out


def test_the_tiny_config_trains_through_the_engine_logging_its_terms(tiny_run):
    result, out = tiny_run
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    logged = [r for r in rows if "pos_ce" in r]
    assert result["stopped"] is False and result["iteration"] == 3 and len(logged) == 4
    assert all(0 <= r["pos_acc"] <= 1 and 0.98 < r["sigma"] <= 1.0 and math.isfinite(r["pos_ce"]) for r in logged)


def test_load_backbone_rebuilds_the_trained_encoder_with_its_sincos_table(tiny_run):
    result, out = tiny_run
    backbone, meta = load_backbone(result["backbone"])
    state = torch.load(latest_checkpoint(out), weights_only=True)["model"]
    assert meta["method"] == "droppos" and meta["arch"]["pos_embed_type"] == "sincos"
    assert all(torch.equal(v, state[f"encoder.{k}"]) for k, v in backbone.state_dict().items())


def test_the_exported_head_rebuilds_the_trained_decoder(tiny_run):
    _, out = tiny_run
    decoder, meta = load_droppos_head(os.path.join(out, "droppos_head.pth"))
    state = torch.load(latest_checkpoint(out), weights_only=True)["model"]
    assert meta["grid"] == [6, 6] and meta["num_positions"] == 36 and meta["mask_token_type"] == "param"
    assert all(torch.equal(v, state[f"decoder.{k}"]) for k, v in decoder.state_dict().items())


@pytest.mark.parametrize("target", ["detectron2", "mmseg", "timm"])
def test_the_export_converts_with_parity_ok(tiny_run, tmp_path, target):
    result, _ = tiny_run
    summary = convert_checkpoint(result["backbone"], tmp_path / f"{target}.pth", target, grid=(8, 8), quiet=True)
    assert summary["parity"].ok, summary["parity"].describe()


def test_the_training_checkpoint_converts_to_the_same_tensors_as_the_export(tiny_run, tmp_path):
    result, out = tiny_run
    from_export = convert_checkpoint(result["backbone"], tmp_path / "a.pth", "detectron2", grid=(8, 8), quiet=True)
    from_training = convert_checkpoint(
        latest_checkpoint(out), tmp_path / "b.pth", "detectron2", grid=(8, 8), quiet=True
    )
    assert from_training["parity"].ok, from_training["parity"].describe()
    a = torch.load(tmp_path / "a.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b.pth", weights_only=True)["model"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert from_export["parity"].ok


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(toy_images, tmp_path):
    straight = train(_tiny(toy_images, str(tmp_path / "straight")))
    train(_tiny(toy_images, str(tmp_path / "resumed"), "train.max_iterations=2", "train.checkpoint_every=2"))
    resumed = train(_tiny(toy_images, str(tmp_path / "resumed")))
    a, _ = load_backbone(straight["backbone"])
    b, _ = load_backbone(resumed["backbone"])
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
