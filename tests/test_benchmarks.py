"""Helpers of the benchmark scripts (the scripts themselves print measurements and are not timed in tests)."""

import importlib.util
import os

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
