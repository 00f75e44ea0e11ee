"""Runs of the real pretraining entry point in a subprocess, and what they log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.paths import REPO


def read_rows(out: str) -> list[dict]:
    """Every row of ``<out>/metrics.jsonl`` that carries a loss, in file order."""
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "loss" in r]


def read_losses(out: str) -> dict[int, float]:
    """``{iteration: loss}`` of ``<out>/metrics.jsonl``."""
    return {r["iteration"]: r["loss"] for r in read_rows(out)}


def run_train(args, **kw) -> subprocess.Popen:
    """``python -m pretrain.engine.train ARGS`` from the repository, single-threaded, output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, "-m", "pretrain.engine.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )
