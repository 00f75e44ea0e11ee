"""Preemption with data-loader workers, resume that checks what it resumes, clean state after crashes, and config
errors before any work, all through the real entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pretrain.data.folder import ImageFolderDataset
from pretrain.engine.resume import MAY_CHANGE, ResumeError, check_resume_config, config_changes
from tests.support.paths import REPO
from tests.support.runs import read_losses, read_rows, run_train
from tests.support.tiny import tiny_overrides


def _finish(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    log = p.communicate(timeout=timeout)[0]
    return p.returncode, log


def _terminate_group_after_3_iterations(p: subprocess.Popen, out: str) -> tuple[int, str]:
    """SIGTERM to the process group of ``p`` once ``out`` has logged 3 iterations (as SLURM preemption and
    ``timeout`` send it); then wait for the exit."""
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(os.path.join(out, "metrics.jsonl")) and len(read_losses(out)) >= 3:
            os.killpg(p.pid, signal.SIGTERM)
            break
        time.sleep(0.05)
    return _finish(p, 180)


@pytest.fixture(scope="module")
def reference(toy_images, tmp_path_factory):
    """An uninterrupted 12-iteration run: its losses by iteration."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    rc, log = _finish(run_train(tiny_overrides(toy_images, out)))
    assert rc == 0, log
    return read_losses(out)


@pytest.fixture(scope="module")
def group_sigterm(toy_images, tmp_path_factory):
    """A run with 2 data-loader workers in a process group of its own, SIGTERM sent to the whole group after 3
    logged iterations (as SLURM preemption and ``timeout`` do), then the same command again."""
    out = str(tmp_path_factory.mktemp("group") / "run")
    args = tiny_overrides(toy_images, out, **{"train.num_workers": 2})
    rc, log = _terminate_group_after_3_iterations(run_train(args, start_new_session=True), out)
    checkpoints = sorted(os.listdir(os.path.join(out, "checkpoints"))) if os.path.isdir(out) else []
    rc2, log2 = _finish(run_train(args))
    return dict(rc=rc, log=log, checkpoints=checkpoints, rc2=rc2, log2=log2, rows=read_rows(out))


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_writes_a_checkpoint_and_exits_143(group_sigterm):
    assert group_sigterm["rc"] == 143, group_sigterm["log"][-3000:]
    assert any(name.startswith("ckpt_") for name in group_sigterm["checkpoints"]), group_sigterm["checkpoints"]


@pytest.mark.slow
def test_a_run_stopped_with_workers_resumes_to_the_losses_of_an_uninterrupted_run(group_sigterm, reference):
    assert group_sigterm["rc2"] == 0, group_sigterm["log2"][-3000:]
    losses = {r["iteration"]: r["loss"] for r in group_sigterm["rows"]}
    assert sorted(losses) == sorted(reference)
    assert max(abs(losses[i] - reference[i]) for i in reference) <= 1e-6


@pytest.mark.slow
def test_metrics_after_a_resume_hold_each_iteration_once(group_sigterm):
    iterations = [r["iteration"] for r in group_sigterm["rows"]]
    assert iterations == sorted(set(iterations)) == list(range(12))


def _short_run(toy_images, out, **extra) -> None:
    """6 of the 12 iterations, with checkpoints after iterations 2 and 5."""
    args = tiny_overrides(toy_images, out, **{"train.max_iterations": 6, "train.checkpoint_every": 3, **extra})
    rc, log = _finish(run_train(args))
    assert rc == 0, log


@pytest.mark.slow
def test_resume_with_another_lr_is_refused_naming_both_values(toy_images, tmp_path):
    out = str(tmp_path / "run")
    _short_run(toy_images, out)
    rc, log = _finish(run_train(tiny_overrides(toy_images, out, **{"optim.base_lr": 0.5})))
    assert rc == 2
    assert "optim.base_lr: 0.002 in the checkpoint, 0.5 now" in log and "train.resume_may_change" in log


@pytest.mark.slow
def test_an_explicitly_allowed_change_resumes_and_keeps_the_original_config(toy_images, tmp_path):
    out = str(tmp_path / "run")
    _short_run(toy_images, out)
    with open(os.path.join(out, "config.yaml")) as f:
        original = f.read()
    extra = {"optim.base_lr": 0.001, "train.resume_may_change": "[optim.base_lr,optim.lr]"}
    rc, log = _finish(run_train(tiny_overrides(toy_images, out, **extra)))
    assert rc == 0, log
    with open(os.path.join(out, "config.yaml")) as f:
        assert f.read() == original
    with open(os.path.join(out, "config.resume-00000006.yaml")) as f:
        assert "base_lr: 0.001" in f.read()


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_is_skipped_and_the_older_one_resumed(toy_images, tmp_path, reference):
    out = str(tmp_path / "run")
    _short_run(toy_images, out)
    newest = os.path.join(out, "checkpoints", "ckpt_00000005.pth")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    rc, log = _finish(run_train(tiny_overrides(toy_images, out)))
    assert rc == 0, log
    assert f"skipping unreadable checkpoint {newest}" in log
    assert "ckpt_00000002.pth (next iteration 3)" in log
    losses = read_losses(out)
    assert max(abs(losses[i] - reference[i]) for i in reference) <= 1e-6


@pytest.mark.slow
def test_a_crashed_write_leaves_no_temporary_and_no_duplicate_metrics_after_resume(toy_images, tmp_path):
    """As after a kill -9 during the write of the checkpoint after iteration 5: that file is missing, its
    temporary is there, and iterations 3-5 are logged already."""
    out = str(tmp_path / "run")
    _short_run(toy_images, out)
    ckpt_dir = os.path.join(out, "checkpoints")
    os.replace(os.path.join(ckpt_dir, "ckpt_00000005.pth"), os.path.join(ckpt_dir, ".tmp-abc123.pth"))
    rc, log = _finish(run_train(tiny_overrides(toy_images, out)))
    assert rc == 0, log
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(".tmp-")]
    iterations = [r["iteration"] for r in read_rows(out)]
    assert iterations == list(range(12))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.checkpoint_every=0", "error: train.checkpoint_every must be >= 1, got 0"),
        ("train.checkpoint_every=abc", "error: train.checkpoint_every in command line: Value 'abc'"),
        ("train.log_every=0", "error: train.log_every must be >= 1, got 0"),
        ("train.batch_size_per_gpu=-2", "error: train.batch_size_per_gpu must be >= 1, got -2"),
        ("optim.epochs=abc", "error: optim.epochs in command line: Value 'abc'"),
        ("optim.warmup_epochs=9", "error: optim.warmup_epochs (9) must be <= optim.epochs (4)"),
    ],
)
def test_a_bad_value_is_one_line_before_any_output_is_written(override, message, toy_images, tmp_path):
    out = str(tmp_path / "run")
    p = subprocess.run(
        [sys.executable, "-m", "pretrain.engine.train", *tiny_overrides(toy_images, out), override],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith(message), p.stderr
    assert not os.path.exists(out)


def test_keys_outside_the_allowed_set_are_refused_with_both_values():
    saved = {"optim": {"base_lr": 0.002}, "train": {"log_every": 10, "seed": 0}}
    new = {"optim": {"base_lr": 0.002}, "train": {"log_every": 5, "seed": 1}}
    with pytest.raises(ResumeError, match=r"train\.seed: 0 in the checkpoint, 1 now"):
        check_resume_config(saved, new, "ckpt.pth")


def test_logging_and_checkpointing_keys_may_change_on_resume():
    saved = {"train": {"log_every": 10, "num_workers": 8, "checkpoint_every": 100, "max_iterations": 0}}
    new = {"train": {"log_every": 1, "num_workers": 0, "checkpoint_every": 5, "max_iterations": 7}}
    changes = check_resume_config(saved, new, "ckpt.pth")
    assert {k for k, _, _ in changes} == {"train.log_every", "train.num_workers", "train.checkpoint_every",
                                          "train.max_iterations"} <= MAY_CHANGE  # fmt: skip


def test_keys_missing_from_an_older_checkpoint_are_not_changes():
    assert config_changes({"train": {"seed": 0}}, {"train": {"seed": 0}, "method": "intertwined"}) == []


def test_a_16_bit_grayscale_png_keeps_its_range(tmp_path):
    values = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(values).save(tmp_path / "wide.png")
    arr = np.asarray(ImageFolderDataset(str(tmp_path)).load(0))
    want = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)  # scaled, not clipped at 255
    assert arr.shape == (64, 64, 3) and (arr == want[..., None]).all() and arr.max() == 255 and arr.min() == 0
    assert (arr[..., 0] < 255).mean() > 0.99  # clipping would have saturated all but the first 16 pixels


def _pretrain_sh(args, port: int) -> subprocess.Popen:
    """``tools/pretrain.sh ARGS`` on 2 processes (torchrun, gloo), in a process group of its own."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GPUS="2", MASTER_PORT=str(port), PYTHON=sys.executable)
    return subprocess.Popen(
        ["bash", os.path.join(REPO, "tools", "pretrain.sh"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def two_process_group_sigterm(toy_images, tmp_path_factory):
    """On 2 processes with 2 workers each: an uninterrupted run; a run whose process group gets SIGTERM after 3
    logged iterations; the same command again."""
    tmp = tmp_path_factory.mktemp("two")
    extra = {"train.num_workers": 2, "train.batch_size_per_gpu": 2}
    ref_out, cut_out = str(tmp / "ref"), str(tmp / "cut")
    rc_ref, log_ref = _finish(_pretrain_sh(tiny_overrides(toy_images, ref_out, **extra), 29631))
    p = _pretrain_sh(tiny_overrides(toy_images, cut_out, **extra), 29632)
    rc_cut, log_cut = _terminate_group_after_3_iterations(p, cut_out)
    checkpoints = sorted(os.listdir(os.path.join(cut_out, "checkpoints")))
    rc_res, log_res = _finish(_pretrain_sh(tiny_overrides(toy_images, cut_out, **extra), 29633))
    return dict(
        ref=(rc_ref, log_ref, read_losses(ref_out)),
        cut=(rc_cut, log_cut, checkpoints),
        resumed=(rc_res, log_res, read_losses(cut_out)),
    )


@pytest.mark.slow
def test_sigterm_to_a_two_process_group_writes_a_checkpoint_and_exits_143(two_process_group_sigterm):
    rc, log, checkpoints = two_process_group_sigterm["cut"]
    assert rc == 143, log[-3000:]
    assert any(name.startswith("ckpt_") for name in checkpoints), checkpoints


@pytest.mark.slow
def test_a_two_process_run_resumes_to_the_losses_of_an_uninterrupted_one(two_process_group_sigterm):
    rc_ref, log_ref, ref = two_process_group_sigterm["ref"]
    rc, log, losses = two_process_group_sigterm["resumed"]
    assert rc_ref == 0 and rc == 0, (log_ref + log)[-3000:]
    assert sorted(losses) == sorted(ref) == list(range(12))
    assert max(abs(losses[i] - ref[i]) for i in ref) <= 1e-6
