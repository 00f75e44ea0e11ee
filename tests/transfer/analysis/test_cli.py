"""The analysis tools from the command line."""

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.support.paths import REPO
from tests.transfer.analysis.helpers import _brute_mean_pairwise_distance, _tool

# CLI smoke


def test_analyze_attention_cli(tiny_ckpts):
    root, paths = tiny_ckpts
    out = root / "attn_out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "analyze_attention.py"),
        *paths,
        "--images",
        str(root / "imgs"),
        "--size",
        "64",
        "--queries",
        "0.5,0.5",
        "10,50",
        "--out",
        str(out),
        "--quiet",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(out / "attention_stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(x["checkpoint"], x["layer"]) for x in rows] == [
        ("tiny0", "1"),
        ("tiny0", "2"),
        ("tiny1", "1"),
        ("tiny1", "2"),
    ]
    for x in rows:  # random init: near-uniform attention
        assert 0 <= float(x["nmi"]) < 0.05
        assert float(x["mad"]) == pytest.approx(_brute_mean_pairwise_distance(4, 4, 16), rel=0.05)
    for name in ("attention_stats.png", "attention_maps_tiny0.png", "attention_maps_tiny1.png"):
        assert (out / name).stat().st_size > 1000
    bad = subprocess.run(
        cmd[:2] + [str(root / "missing.pth"), "--images", str(root / "imgs")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert bad.returncode == 2 and "error" in bad.stderr


def test_probe_dense_cli(tiny_ckpts, toy_ade, capsys):
    root, paths = tiny_ckpts
    tool = _tool("probe_dense")
    out = root / "probe_out"
    argv = [paths[1], "--data", toy_ade, "--size", "64", "--probe", "both", "--layers", "all"]
    argv += ["--remove-top-var", "0", "4", "--out", str(out), "--linear-steps", "50", "--quiet"]
    assert tool.main(argv) == 0
    with open(out / "probe_results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2  # layers x m x probes
    assert {r["probe"] for r in rows} == {"nn", "linear"} and {r["layer"] for r in rows} == {"1", "2"}
    for r in rows:
        assert 0.0 <= float(r["miou"]) <= 1.0 and 0.0 <= float(r["acc"]) <= 1.0
        assert int(r["dim"]) == (64 if r["remove_top_var"] == "0" else 60)
    data = json.load(open(out / "probe_results.json"))
    assert len(data) == 8 and len(data[0]["iou"]) == 4
    assert "mIoU" in capsys.readouterr().out
    out2 = root / "probe_rand"
    argv = [paths[0], "--data", toy_ade, "--size", "64", "--probe", "nn", "--random-init"]
    assert tool.main(argv + ["--out", str(out2), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out2 / "probe_results.csv")))
    assert len(rows) == 1 and rows[0]["init"] == "random"
    assert tool.main([paths[0], "--data", str(root), "--out", str(out2), "--quiet"]) == 2  # not an ADE layout


def test_probe_position_cli(tiny_ckpts):
    root, paths = tiny_ckpts
    tool = _tool("probe_position")
    out = root / "pos_out"
    argv = [paths[0], "--images", str(root / "imgs"), "--size", "64", "--content-ratios", "0,0.5"]
    assert tool.main(argv + ["--pos-ratios", "0,0.5", "--out", str(out), "--quiet"]) == 0
    rows = list(csv.reader(open(out / "position_top1.csv")))
    assert rows[0] == ["content_ratio \\ pos_ratio", "0", "0.5"] and [r[0] for r in rows[1:]] == ["0", "0.5"]
    assert rows[1][1] == "nan" and 0.0 <= float(rows[1][2]) <= 1.0
    assert (out / "position_within1.csv").exists() and (out / "position_results.csv").exists()
