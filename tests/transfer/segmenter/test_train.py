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


def test_toy_run_and_resume(ref_ckpt, toy_root, tmp_path):
    _, path = ref_ckpt
    work = str(tmp_path / "run")
    common = ["--init", path, "--work-dir", work, "--data-root", toy_root, "--seed", "0", "--cfg-options"]
    common += ["default_hooks.checkpoint.interval=5", "train_cfg.val_interval=10", "default_hooks.logger.interval=5"]
    log = _train(["--max-iters", "10"] + common)
    assert "verified" in log and "pretrained backbone tensors" in log
    first = json.load(open(os.path.join(work, "metrics_final.json")))
    assert first["iter"] == 10 and first["start_iter"] == 0
    assert all(math.isfinite(first[k]) for k in ("mIoU", "aAcc", "mAcc"))
    assert 0.0 <= first["mIoU"] <= 100.0
    assert os.path.isfile(os.path.join(work, "iter_10.pth"))
    # "interruption": continue the same work dir to 15 iterations from its latest checkpoint (weights_only load)
    log = _train(["--max-iters", "15", "--resume"] + common)
    assert "resumed at iteration 10" in log
    second = json.load(open(os.path.join(work, "metrics_final.json")))
    assert second["start_iter"] == 10 and second["iter"] == 15
    assert math.isfinite(second["mIoU"])


def test_entry_fails_loudly_on_broken_checkpoint(ref_ckpt, toy_root, tmp_path):
    ref, _ = ref_ckpt
    # passes the pre-flight checks (dims, grid, flags), so it is the hook before iteration 1 that must catch it
    bad = save_converted(ref, str(tmp_path / "broken.pth"), rename=("layers.0.ffn.layers.1.weight", "layers.0.mlp.w"))
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "transfer.segmenter.train", TOY_CFG, "--init", bad, "--work-dir", str(tmp_path / "w")]
        + ["--data-root", toy_root, "--max-iters", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "CheckpointLoadError" in out and "layers.0.mlp.w" in out and "layers.0.ffn.layers.1.weight" in out
    assert not os.path.exists(os.path.join(str(tmp_path / "w"), "metrics_final.json"))
