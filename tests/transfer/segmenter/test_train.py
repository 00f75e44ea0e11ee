"""Real toy runs through the entry: train and resume, broken checkpoints."""

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")


from tests.support.paths import REPO
from tests.transfer.segmenter.helpers import TOY_CFG, save_converted


# real toy runs through the entry
def _train(args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "transfer.segmenter.train", TOY_CFG, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def toy_run_args(ref_ckpt, toy_root, tmp_path_factory):
    """``(work dir, arguments)`` of a toy run checkpointing every 5 and validating every 10 iterations."""
    _, path = ref_ckpt
    work = str(tmp_path_factory.mktemp("toy_run") / "run")
    common = ["--init", path, "--work-dir", work, "--data-root", toy_root, "--seed", "0", "--cfg-options"]
    common += ["default_hooks.checkpoint.interval=5", "train_cfg.val_interval=10", "default_hooks.logger.interval=5"]
    return work, common


@pytest.fixture(scope="module")
def first_run(toy_run_args):
    """10 iterations: the log, the final metrics (read before the resume rewrites them) and the files left."""
    work, common = toy_run_args
    log = _train(["--max-iters", "10"] + common)
    metrics = json.load(open(os.path.join(work, "metrics_final.json")))
    files = {f for f in os.listdir(work) if os.path.isfile(os.path.join(work, f))}
    return dict(log=log, metrics=metrics, files=files)


@pytest.fixture(scope="module")
def resumed_run(toy_run_args, first_run):
    """The "interruption": the same work dir continued to 15 iterations from its latest checkpoint (weights_only
    load)."""
    work, common = toy_run_args
    log = _train(["--max-iters", "15", "--resume"] + common)
    return dict(log=log, metrics=json.load(open(os.path.join(work, "metrics_final.json"))))


def test_toy_run_verifies_the_pretrained_backbone_tensors(first_run):
    assert "verified" in first_run["log"] and "pretrained backbone tensors" in first_run["log"]


def test_toy_run_final_metrics_cover_iterations_0_to_10(first_run):
    assert first_run["metrics"]["iter"] == 10 and first_run["metrics"]["start_iter"] == 0


def test_toy_run_metrics_are_finite(first_run):
    assert all(math.isfinite(first_run["metrics"][k]) for k in ("mIoU", "aAcc", "mAcc"))


def test_toy_run_miou_is_a_percentage(first_run):
    assert 0.0 <= first_run["metrics"]["mIoU"] <= 100.0


def test_toy_run_saves_a_checkpoint_at_its_last_iteration(first_run):
    assert "iter_10.pth" in first_run["files"]


def test_resume_says_where_it_resumed(resumed_run):
    assert "resumed at iteration 10" in resumed_run["log"]


def test_resumed_run_metrics_cover_iterations_10_to_15(resumed_run):
    assert resumed_run["metrics"]["start_iter"] == 10 and resumed_run["metrics"]["iter"] == 15


def test_resumed_run_miou_is_finite(resumed_run):
    assert math.isfinite(resumed_run["metrics"]["mIoU"])


@pytest.fixture(scope="module")
def broken_checkpoint_run(ref_ckpt, toy_root, tmp_path_factory):
    """The entry on a checkpoint with one renamed key: it passes the pre-flight checks (dims, grid, flags), so it
    is the hook before iteration 1 that must catch it. ``(process, work dir)``."""
    ref, _ = ref_ckpt
    tmp = tmp_path_factory.mktemp("broken")
    bad = save_converted(ref, str(tmp / "broken.pth"), rename=("layers.0.ffn.layers.1.weight", "layers.0.mlp.w"))
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "transfer.segmenter.train", TOY_CFG, "--init", bad, "--work-dir", str(tmp / "w")]
        + ["--data-root", toy_root, "--max-iters", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, str(tmp / "w")


def test_entry_exits_nonzero_on_a_broken_checkpoint(broken_checkpoint_run):
    proc, _ = broken_checkpoint_run
    assert proc.returncode != 0


def test_entry_error_on_a_broken_checkpoint_names_the_renamed_key(broken_checkpoint_run):
    proc, _ = broken_checkpoint_run
    out = proc.stdout + proc.stderr
    assert "CheckpointLoadError" in out and "layers.0.mlp.w" in out and "layers.0.ffn.layers.1.weight" in out


def test_entry_writes_no_final_metrics_for_a_broken_checkpoint(broken_checkpoint_run):
    _, work = broken_checkpoint_run
    assert not os.path.exists(os.path.join(work, "metrics_final.json"))
