"""Helpers of the benchmark scripts (the scripts themselves print measurements and are not timed in tests)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest


def _load(repo_root, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(repo_root, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_ratio_cancels_drift_between_rounds(repo_root):
    bench = _load(repo_root, "pretrain_step")
    # the machine slows down 4x over the run; within each round a takes 1.2x as long as b
    b = [1.0, 2.0, 4.0, 3.0, 1.5]
    a = [1.2 * t for t in b]
    med, q1, q3 = bench.paired_ratio(a, b)
    assert med == pytest.approx(1.2) and q1 == pytest.approx(1.2) and q3 == pytest.approx(1.2)
    # unequal per-round ratios 1, 2, 3, 5: their median and inclusive quartiles
    med, q1, q3 = bench.paired_ratio([1.0, 3.0, 2.0, 5.0], [1.0, 1.0, 1.0, 1.0])
    assert med == pytest.approx(2.5) and q1 == pytest.approx(1.75) and q3 == pytest.approx(3.5)
    assert bench.paired_ratio([2.0], [1.0]) == (2.0, 2.0, 2.0)


def test_data_pipeline_runs_tiny_and_reports_every_figure(repo_root, tmp_path):
    bench = _load(repo_root, "data_pipeline")
    out = tmp_path / "dp.json"
    args = ["--tiny", "--images", "4", "--size", "120x90", "--batch", "2", "--rounds", "1", "--device-batch", "4"]
    assert bench.main([*args, "--loader-workers", "1", "--loader-batches", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["paths"]) == {"dinov2", "worker", "device", "device_torch"}
    assert all(p["images_per_s"] > 0 for p in r["paths"].values())
    assert r["device_stage"]["cpu"]["s_per_image"] > 0 and r["loader"]["images_per_s"] > 0
    assert r["draft"]["scales"] == [2] and 0 < r["draft"]["mean_abs"] < 3  # 200 x 150 images: 1/2 decodes


@pytest.mark.slow
def test_the_gpu_suite_runs_in_smoke_mode_on_the_cpu(repo_root, tmp_path):
    p = subprocess.run(
        ["bash", os.path.join(repo_root, "benchmarks", "gpu_suite.sh"), "--smoke", "--out", str(tmp_path)],
        cwd=repo_root,
        env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    for name in ("pretrain_step", "data_pipeline"):
        assert (tmp_path / f"{name}.json").exists(), name
    step = json.loads((tmp_path / "pretrain_step.json").read_text())
    assert set(step["sizes"]["tiny"]["variants"]) == {"ours", "dinov2", "dinov2_allmask", "bare"}
    assert "loader/step" in p.stdout and "0 part(s) failed" in p.stdout
