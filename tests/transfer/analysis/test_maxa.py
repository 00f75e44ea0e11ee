"""MAXA: known answers for ARI, k-means, boundaries and the distance transform; the adapter's shapes and its
distance bias; a task the adapter must learn; the tool end to end on a tiny backbone and toy sets."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from transfer.analysis.maxa.adapter import MAXA, CrossAttention, grid_centres
from transfer.analysis.maxa.metrics import adjusted_rand_index, binary_iou, instance_ari, kmeans
from transfer.analysis.maxa.run import Split, instance_classes, run_task
from transfer.analysis.maxa.targets import boundaries, distance_transform


@pytest.fixture(autouse=True)
def _one_thread():
    """The adapters are tiny: one thread is faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ari_of_identical_and_permuted_labelings_is_one():
    a = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    assert adjusted_rand_index(a, a) == pytest.approx(1.0)
    assert adjusted_rand_index(a, torch.tensor([5, 5, 9, 9, 1, 1, 1])) == pytest.approx(1.0)


def test_ari_hand_computed_and_chance():
    # contingency [[2, 0], [1, 1]]: index 1, rows 1 + 1 = 2, cols 3 + 0 = 3, total C(4,2) = 6
    # expected 2 * 3 / 6 = 1, best (2 + 3) / 2 = 2.5: ARI (1 - 1) / (2.5 - 1) = 0
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(4, (5000,), generator=g), torch.randint(4, (5000,), generator=g)
    assert abs(adjusted_rand_index(a, b)) < 0.01


def test_kmeans_and_instance_ari_separate_clear_clusters():
    x = torch.cat([torch.randn(30, 2) * 0.05 + c for c in (torch.tensor([0.0, 0]), torch.tensor([5.0, 5]))])
    assign = kmeans(x, 2)
    assert adjusted_rand_index(assign, torch.tensor([0] * 30 + [1] * 30)) == 1.0
    inst = torch.zeros(4, 4, dtype=torch.long)
    inst[:, :2], inst[0, 3] = 1, 2  # two instances, background elsewhere
    latent = torch.stack([inst.float() * 3, torch.zeros(4, 4)])  # features tell the instances apart
    assert instance_ari(latent, inst) == 1.0
    assert instance_ari(latent, torch.zeros(4, 4, dtype=torch.long)) is None


def test_boundaries_and_distance_transform_of_a_hand_made_mask():
    m = torch.zeros(7, 7, dtype=torch.long)
    m[2:5, 2:5] = 1  # a 3x3 square
    b = boundaries(m)
    inner = torch.zeros(7, 7, dtype=torch.bool)
    inner[2:5, 2:5] = True
    inner[3, 3] = False  # the square's 8 outer pixels, and the 12 background pixels touching them (4-neighbours)
    ring = torch.zeros(7, 7, dtype=torch.bool)
    ring[1, 2:5] = ring[5, 2:5] = ring[2:5, 1] = ring[2:5, 5] = True
    assert torch.equal(b, inner | ring)
    d = distance_transform(b)
    assert (
        d[3, 3] == 1.0 and d[0, 0] == pytest.approx(math.hypot(1, 2)) and d[1, 1] == 1.0
    )  # (1, 2) is a boundary pixel
    assert d[b].abs().max() == 0
    assert binary_iou(b, b) == 1.0 and binary_iou(b, ~b) == 0.0


def test_adapter_shapes_and_first_layer_distance_bias():
    m = MAXA(24, 3, (4, 4), (6, 6))
    assert m(torch.randn(2, 16, 24)).shape == (2, 3, 48, 48)
    assert m.attn1.log_sigma.shape == (8,) and m.attn2.log_sigma is None
    att = CrossAttention(16, 32, 8, bias=True)
    d2 = torch.cdist(grid_centres(2, 2), grid_centres(2, 2)) ** 2
    bias = att.distance_bias(d2).detach()  # sigma 1: 1/sqrt(2 pi) on the diagonal
    assert float(bias[0, 0, 0]) == pytest.approx(1 / math.sqrt(2 * math.pi))
    assert float(bias[0, 0, 1]) == pytest.approx(math.exp(-0.25 / 2) / math.sqrt(2 * math.pi))


def test_instance_classes_one_class_per_training_instance():
    inst = torch.tensor([[[0, 1], [2, 2]], [[1, 0], [0, 1]]])
    cls, n = instance_classes(inst)
    assert n == 3 and cls.tolist() == [[[-1, 0], [1, 1]], [[2, -1], [-1, 2]]]


def test_adapter_learns_a_mapping_the_features_carry():
    # feature 0 of each patch is its boundary label, constant over the patch's 8x8 output block: learnable exactly
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 4, 8, generator=g)
    lab = (feats[:, :, 0] > 0).float().reshape(8, 1, 2, 2)
    target = torch.nn.functional.interpolate(lab, scale_factor=8)[:, 0]
    split = Split(feats, target)
    res = run_task("boundaries", split, split, ((2, 2), (2, 2)), steps=80, seed=0)
    assert res["iou"] > 0.8


def test_boundary_threshold_is_chosen_on_the_training_split():
    from transfer.analysis.maxa.run import score, train_threshold

    gt = torch.zeros(4, 8, 8)
    gt[:, 3, :] = 1.0  # one boundary row: 1/8 of the pixels

    def model(feats):  # probability 0.3 on boundary pixels, 0.05 elsewhere, whatever the features
        p = 0.05 + 0.25 * gt[: len(feats)]
        return torch.logit(p)[:, None]

    split = Split(torch.zeros(4, 1, 1), gt)
    t = train_threshold(model, split)
    assert 0.05 <= t < 0.3  # the first threshold that separates: IoU 1 on the training split
    res = score("boundaries", model, split, threshold=t)
    assert res["iou"] == 1.0 and res["iou_p50"] == 0.0 and res["threshold"] == t
    assert res["iou_trivial"] == pytest.approx(1 / 8)


def test_probe_maxa_tool_end_to_end(tiny_ckpts, toy_ade, tmp_path, monkeypatch):
    from tests.transfer.analysis.helpers import _tool
    from toydata import make_toy_coco

    _, paths = tiny_ckpts
    coco = tmp_path / "coco"
    make_toy_coco(str(coco), num_train=3, num_val=2, image_size=(64, 64), seed=0)
    monkeypatch.setenv("SSLVIT_RESULTS_DB", str(tmp_path / "r.sqlite"))
    argv = [
        paths[0],
        "--coco",
        str(coco),
        "--ade",
        toy_ade,
        "--size",
        "64",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "o"),
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        assert _tool("probe_maxa").main(argv + ["--quiet"]) == 0
    res = json.loads((tmp_path / "o" / "maxa_results.json").read_text())
    assert set(res["tasks"]) == {"boundaries", "distance", "instances", "semseg", "depth"}
    assert "skipped" in res["tasks"]["depth"]  # no depth maps in this set
    assert -1.0 <= res["tasks"]["instances"]["ari"] <= 1.0 and res["tasks"]["instances"]["num_images"] == 2
    assert res["output_side"] == 64 and res["query_grid"] == [8, 8]
    assert (tmp_path / "o" / "maxa_pca.png").read_bytes()[:4] == b"\x89PNG"
    from resultsdb import ResultsDB

    with ResultsDB(str(tmp_path / "r.sqlite"), create=False) as db:
        (r,) = db.records()
    assert r["protocol"] == "maxa" and r["metrics"]["semseg/miou"] == pytest.approx(res["tasks"]["semseg"]["miou"])


def test_probe_maxa_depth_where_the_set_has_depth_maps(tiny_ckpts, tmp_path):
    from tests.transfer.analysis.helpers import _tool
    from toydata import make_toy_coco, make_toy_depth

    _, paths = tiny_ckpts
    coco = tmp_path / "coco"
    make_toy_coco(str(coco), num_train=2, num_val=2, image_size=(64, 64), seed=0)
    make_toy_depth(str(coco))
    argv = [paths[0], "--coco", str(coco), "--tasks", "depth", "--size", "64", "--steps", "2"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert _tool("probe_maxa").main(argv + ["--out", str(tmp_path / "o"), "--quiet"]) == 0
    res = json.loads((tmp_path / "o" / "maxa_results.json").read_text())["tasks"]
    assert list(res) == ["depth"] and math.isfinite(res["depth"]["mse"]) and res["depth"]["mse"] > 0
    from PIL import Image

    from transfer.analysis.maxa.targets import load_depth_maps

    maps = load_depth_maps(str(coco), "val", ["000000000001.jpg"], 64)  # same size: values as written
    png = torch.from_numpy(np.asarray(Image.open(coco / "depth" / "val" / "000000000001.png")) / 65535.0)
    assert torch.allclose(maps[0].double(), png, atol=1e-6)
    assert load_depth_maps(str(tmp_path / "o"), "val", [], 64) is None  # no depth folder
