"""The analysis tools from the command line."""

import contextlib
import csv
import io
import json
import os
import subprocess
import sys

import pytest

from tests.support.paths import REPO
from tests.transfer.analysis.helpers import _brute_mean_pairwise_distance, _tool

# CLI smoke


ENV = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
ANALYZE_ATTENTION = [sys.executable, os.path.join(REPO, "tools", "analyze_attention.py")]


@pytest.fixture(scope="module")
def attention_run(tiny_ckpts):
    """tools/analyze_attention.py on both tiny checkpoints with two query points: the process and its out folder."""
    root, paths = tiny_ckpts
    out = root / "attn_out"
    cmd = ANALYZE_ATTENTION + [*paths, "--images", str(root / "imgs"), "--size", "64", "--queries", "0.5,0.5"]
    cmd += ["10,50", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    return r, out


def _attention_rows(out):
    with open(out / "attention_stats.csv") as fh:
        return list(csv.DictReader(fh))


def test_analyze_attention_succeeds(attention_run):
    r, _ = attention_run
    assert r.returncode == 0, r.stderr


def test_analyze_attention_writes_one_row_per_checkpoint_and_layer(attention_run):
    _, out = attention_run
    assert [(x["checkpoint"], x["layer"]) for x in _attention_rows(out)] == [
        ("tiny0", "1"),
        ("tiny0", "2"),
        ("tiny1", "1"),
        ("tiny1", "2"),
    ]


def test_analyze_attention_finds_near_zero_nmi_in_random_models(attention_run):
    """Random init: near-uniform attention."""
    _, out = attention_run
    for x in _attention_rows(out):
        assert 0 <= float(x["nmi"]) < 0.05


def test_analyze_attention_finds_mad_near_the_mean_pairwise_distance_in_random_models(attention_run):
    """Random init: near-uniform attention."""
    _, out = attention_run
    for x in _attention_rows(out):
        assert float(x["mad"]) == pytest.approx(_brute_mean_pairwise_distance(4, 4, 16), rel=0.05)


@pytest.mark.parametrize("name", ["attention_stats.png", "attention_maps_tiny0.png", "attention_maps_tiny1.png"])
def test_analyze_attention_draws_the_statistics_and_each_checkpoints_maps(attention_run, name):
    _, out = attention_run
    assert (out / name).stat().st_size > 1000


def test_analyze_attention_exits_2_with_an_error_on_a_missing_checkpoint(tiny_ckpts):
    root, _ = tiny_ckpts
    bad = subprocess.run(
        ANALYZE_ATTENTION + [str(root / "missing.pth"), "--images", str(root / "imgs")],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=300,
    )
    assert bad.returncode == 2 and "error" in bad.stderr


@pytest.fixture(scope="module")
def probe_dense():
    return _tool("probe_dense")


@pytest.fixture(scope="module")
def dense_run(tiny_ckpts, toy_ade, probe_dense):
    """probe_dense on the 2-register checkpoint: both probes, all layers, top-variance removal 0 and 4; the return
    code, the out folder and what it printed."""
    root, paths = tiny_ckpts
    out = root / "probe_out"
    argv = [paths[1], "--data", toy_ade, "--size", "64", "--probe", "both", "--layers", "all"]
    argv += ["--remove-top-var", "0", "4", "--out", str(out), "--linear-steps", "50", "--quiet"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = probe_dense.main(argv)
    return rc, out, buf.getvalue()


def _dense_rows(out):
    with open(out / "probe_results.csv") as fh:
        return list(csv.DictReader(fh))


def test_probe_dense_succeeds(dense_run):
    assert dense_run[0] == 0


def test_probe_dense_writes_a_row_per_layer_removal_and_probe(dense_run):
    _, out, _ = dense_run
    assert len(_dense_rows(out)) == 2 * 2 * 2  # layers x m x probes


def test_probe_dense_runs_both_probes_on_every_layer(dense_run):
    rows = _dense_rows(dense_run[1])
    assert {r["probe"] for r in rows} == {"nn", "linear"} and {r["layer"] for r in rows} == {"1", "2"}


def test_probe_dense_scores_are_fractions(dense_run):
    for r in _dense_rows(dense_run[1]):
        assert 0.0 <= float(r["miou"]) <= 1.0 and 0.0 <= float(r["acc"]) <= 1.0


def test_probe_dense_removes_the_requested_number_of_top_variance_dims(dense_run):
    for r in _dense_rows(dense_run[1]):
        assert int(r["dim"]) == (64 if r["remove_top_var"] == "0" else 60)


def test_probe_dense_json_holds_every_result_with_per_class_ious(dense_run):
    _, out, _ = dense_run
    data = json.load(open(out / "probe_results.json"))
    assert len(data) == 8 and len(data[0]["iou"]) == 4


def test_probe_dense_prints_the_miou(dense_run):
    assert "mIoU" in dense_run[2]


@pytest.fixture(scope="module")
def random_init_dense_run(tiny_ckpts, toy_ade, probe_dense):
    root, paths = tiny_ckpts
    out = root / "probe_rand"
    argv = [paths[0], "--data", toy_ade, "--size", "64", "--probe", "nn", "--random-init"]
    return probe_dense.main(argv + ["--out", str(out), "--quiet"]), out


def test_probe_dense_with_random_init_succeeds(random_init_dense_run):
    assert random_init_dense_run[0] == 0


def test_probe_dense_with_random_init_records_the_init_as_random(random_init_dense_run):
    rows = list(csv.DictReader(open(random_init_dense_run[1] / "probe_results.csv")))
    assert len(rows) == 1 and rows[0]["init"] == "random"


def test_probe_dense_exits_2_on_data_not_in_the_ade_layout(tiny_ckpts, probe_dense, tmp_path):
    root, paths = tiny_ckpts
    assert probe_dense.main([paths[0], "--data", str(root), "--out", str(tmp_path / "out"), "--quiet"]) == 2


@pytest.fixture(scope="module")
def position_run(tiny_ckpts):
    """probe_position on the plain checkpoint over content ratios 0, 0.5 x position ratios 0, 0.5."""
    root, paths = tiny_ckpts
    tool = _tool("probe_position")
    out = root / "pos_out"
    argv = [paths[0], "--images", str(root / "imgs"), "--size", "64", "--content-ratios", "0,0.5"]
    return tool.main(argv + ["--pos-ratios", "0,0.5", "--proxy", "--out", str(out), "--quiet"]), out


def _top1_rows(out):
    return list(csv.reader(open(out / "position_top1.csv")))


def test_probe_position_succeeds(position_run):
    assert position_run[0] == 0


def test_probe_position_top1_table_has_content_rows_and_position_columns(position_run):
    rows = _top1_rows(position_run[1])
    assert rows[0] == ["content_ratio \\ pos_ratio", "0", "0.5"] and [r[0] for r in rows[1:]] == ["0", "0.5"]


def test_probe_position_top1_is_nan_without_position_masking_and_a_fraction_with_it(position_run):
    rows = _top1_rows(position_run[1])
    assert rows[1][1] == "nan" and 0.0 <= float(rows[1][2]) <= 1.0


def test_probe_position_also_writes_the_within_one_and_full_results(position_run):
    _, out = position_run
    assert (out / "position_within1.csv").exists() and (out / "position_results.csv").exists()
