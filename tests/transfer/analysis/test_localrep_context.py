"""The global-context probe: a feature that is a linear function of the class fractions gives R^2 near 1,
independent noise about 0; R^2, the central patch and the class counting by hand; the tool records it."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from transfer.analysis import localrep_context as ctx


def test_r2_and_helpers_by_hand():
    y = torch.tensor([[1.0], [2.0], [3.0]])
    assert ctx.r2_scores(y, y) == [1.0]
    assert ctx.r2_scores(y, torch.full_like(y, 2.0)) == [0.0]  # the mean: R^2 0
    assert ctx.r2_scores(y, torch.tensor([[2.0], [2.0], [4.0]])) == [pytest.approx(1 - 2 / 2)]  # SS_res 2, SS_tot 2
    assert ctx.central_patch((6, 6)) == 3 * 6 + 3 and ctx.central_patch((3, 5)) == 1 * 5 + 2
    labels = torch.tensor([[[0, 0, 1, 255]], [[2, 2, 2, 0]]])  # counts: 2 -> 3, 0 -> 3, 1 -> 1
    assert ctx.most_common_classes(labels, 2) == [0, 2]
    frac = ctx.class_fractions(labels, [0, 2])
    assert frac.tolist() == [[0.5, 0.0], [0.25, 0.75]]


def _fractions(n: int) -> torch.Tensor:
    """Pixel fractions of three of four classes (Dirichlet), one row per image."""
    return torch.distributions.Dirichlet(torch.ones(4)).sample((n,))[:, :3]


def test_linear_features_give_r2_near_one_and_noise_about_zero():
    torch.manual_seed(0)
    y = _fractions(64)
    mix = torch.randn(3, 24)
    linear = y @ mix + 0.01 * torch.randn(64, 24)  # the central patch carries the fractions, linearly
    r2 = ctx.r2_scores(y, ctx.out_of_fold_predictions(linear, y))
    assert min(r2) > 0.95
    noise = torch.randn(64, 24)
    r2 = ctx.r2_scores(y, ctx.out_of_fold_predictions(noise, y))
    assert all(-0.25 < v < 0.1 for v in r2), r2
    # more dimensions than images (the toy case: 32 images, 192-d tokens): ridge could interpolate, and a centred
    # fit's leave-one-out error would leak the left-out image (minus the sum of the others) and pick the weakest
    # ridge; on noise the strength chosen must be a strong one, and R^2 stay near 0
    y = _fractions(32)
    x = torch.randn(32, 192, dtype=torch.float64)
    _, lam, _ = ctx._ridge_loo(x[:24], y[:24].double(), ctx.ALPHAS)
    assert lam / float((x[:24] ** 2).sum(1).mean()) >= 100
    r2 = ctx.r2_scores(y, ctx.out_of_fold_predictions(x, y))
    assert all(-0.2 < v < 0.1 for v in r2), r2


def test_global_context_r2_reads_the_central_patch_only():
    torch.manual_seed(0)
    n, grid = 40, (4, 4)
    labels = torch.randint(0, 3, (n, 8, 8))
    y = ctx.class_fractions(labels, ctx.most_common_classes(labels, 3))
    feats = torch.randn(n, 16, 12)
    feats[:, ctx.central_patch(grid), :3] = y * 10  # only the central patch knows
    res = ctx.global_context_r2(feats, labels, grid)
    assert res["r2_mean"] > 0.95 and len(res["r2"]) == 3
    # the floor: 4 folds of 10, each image predicted by the mean of the 30 others outside its fold
    y_sel = y.double()
    fold = torch.arange(n) % 4
    by_hand = torch.stack([y_sel[fold != fold[i]].mean(0) for i in range(n)])
    assert res["r2_null_mean"] == pytest.approx(sum(ctx.r2_scores(y_sel, by_hand)) / 3) and res["r2_null_mean"] < 0
    feats[:, ctx.central_patch(grid)] = torch.randn(n, 12)
    feats[:, 0, :3] = y * 10  # a corner patch knows, the central one does not
    assert ctx.global_context_r2(feats, labels, grid)["r2_mean"] < 0.2
    with pytest.raises(ValueError, match="at least 4 images"):
        ctx.out_of_fold_predictions(torch.randn(3, 3), torch.randn(3, 1))


def test_probe_localrep_tool_with_the_context_probe(tiny_ckpts, toy_ade, tmp_path, monkeypatch):
    from resultsdb import ResultsDB
    from tests.transfer.analysis.helpers import _tool

    root, paths = tiny_ckpts
    monkeypatch.setenv("SSLVIT_RESULTS_DB", str(tmp_path / "r.sqlite"))
    argv = [paths[0], "--images", str(root / "imgs"), "--ade", toy_ade, "--size", "64", "--frames", "4"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert _tool("probe_localrep").main(argv + ["--max-gap", "2", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    res = json.loads((tmp_path / "o" / "localrep_results.json").read_text())["context"]
    assert res["num_images"] == 9 and len(res["classes"]) == 3 and res["r2_mean"] < 1.0
    with ResultsDB(str(tmp_path / "r.sqlite"), create=False) as db:
        (r,) = db.records()
    assert r["metrics"]["context/r2_mean"] == pytest.approx(res["r2_mean"])
    assert r["metrics"]["context/r2_null_mean"] == pytest.approx(res["r2_null_mean"])
    assert r["config"]["ade"] == toy_ade
