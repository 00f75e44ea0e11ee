"""The training loop: SIGTERM and resume, unreadable files."""

import json
import os
import signal
import time

import pytest

from pretrain.engine.config import load_config
from tests.support.runs import read_losses, run_train
from tests.support.tiny import tiny_overrides
from toydata import make_toy_images


@pytest.fixture(scope="module")
def sigterm_and_resume(toy_images, tmp_path_factory):
    """Three runs of the entry point: an uninterrupted reference, a run stopped by SIGTERM after 3 logged
    iterations, and the same command again, which resumes. What each left behind, read right after it ended."""
    tmp = tmp_path_factory.mktemp("sigterm")
    ref_out, cut_out = str(tmp / "ref"), str(tmp / "cut")
    runs = {}
    p = run_train(tiny_overrides(toy_images, ref_out))
    log = p.communicate(timeout=300)[0]
    runs["ref"] = dict(returncode=p.returncode, log=log, losses=read_losses(ref_out))

    p = run_train(tiny_overrides(toy_images, cut_out))
    metrics = os.path.join(cut_out, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(metrics) and len(read_losses(cut_out)) >= 3:
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    log = p.communicate(timeout=120)[0]
    first = read_losses(cut_out)
    k = max(first) if first else None
    checkpoint = os.path.join(cut_out, "checkpoints", f"ckpt_{k:08d}.pth") if first else None
    has_checkpoint = checkpoint is not None and os.path.exists(checkpoint)
    runs["cut"] = dict(returncode=p.returncode, log=log, last=k, has_checkpoint=has_checkpoint)

    p = run_train(tiny_overrides(toy_images, cut_out))
    log = p.communicate(timeout=300)[0]
    runs["resumed"] = dict(
        returncode=p.returncode,
        log=log,
        losses=read_losses(cut_out),
        has_backbone=os.path.exists(os.path.join(cut_out, "backbone.pth")),
    )
    return runs


def test_the_uninterrupted_run_logs_all_12_iterations(sigterm_and_resume):
    ref = sigterm_and_resume["ref"]
    assert ref["returncode"] == 0, ref["log"]
    assert sorted(ref["losses"]) == list(range(12))


def test_sigterm_stops_a_run_with_exit_143_after_writing_a_checkpoint(sigterm_and_resume):
    cut = sigterm_and_resume["cut"]
    assert cut["returncode"] == 143, cut["log"]  # stopped by the signal, with a checkpoint
    k = cut["last"]
    assert k is not None and 2 <= k < 11, f"stopped at {k}"
    assert cut["has_checkpoint"]


def test_the_same_command_resumes_at_the_iteration_after_the_checkpoint(sigterm_and_resume):
    resumed, k = sigterm_and_resume["resumed"], sigterm_and_resume["cut"]["last"]
    assert resumed["returncode"] == 0, resumed["log"]
    assert "resumed from" in resumed["log"] and f"(next iteration {k + 1})" in resumed["log"]


def test_sigterm_then_resume_reproduces_uninterrupted_run(sigterm_and_resume):
    ref, resumed = sigterm_and_resume["ref"]["losses"], sigterm_and_resume["resumed"]["losses"]
    assert sorted(resumed) == list(range(12))
    for it in range(12):
        assert resumed[it] == ref[it], (it, resumed[it], ref[it])  # bit-exact on CPU


def test_the_resumed_run_exports_the_backbone(sigterm_and_resume):
    assert sigterm_and_resume["resumed"]["has_backbone"]


@pytest.fixture(scope="module")
def run_over_corrupt_files(tmp_path_factory):
    """A 2-iteration run over 57 toy images plus 3 unreadable ones and a non-image file: (result, output folder)."""
    from pretrain.engine.train import train

    d = tmp_path_factory.mktemp("imgs")
    make_toy_images(str(d), num_images=57, size=(48, 48), seed=1)
    good = sorted(os.listdir(d))[0]
    raw = open(d / good, "rb").read()
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (d / "text.jpg").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("ignored: not an image extension")
    out = str(tmp_path_factory.mktemp("corrupt_run") / "out")
    cfg = load_config([], tiny_overrides(str(d), out, **{"optim.epochs": 1, "train.epoch_length": 2}))
    return train(cfg), out


def test_a_run_over_corrupt_files_completes_and_exports_the_backbone(run_over_corrupt_files):
    result, _ = run_over_corrupt_files
    assert result["stopped"] is False and os.path.exists(result["backbone"])


def test_the_files_the_header_check_refuses_are_counted_in_the_metrics(run_over_corrupt_files):
    """Start-up reads headers only: the empty and the non-image file are found; the truncated JPEG is not (it is
    substituted when it is loaded)."""
    _, out = run_over_corrupt_files
    events = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert {"iteration": 0, "skipped_files": 2} in events


def test_the_log_reports_the_candidates_and_the_skipped_unreadable_files(run_over_corrupt_files):
    _, out = run_over_corrupt_files
    log = open(os.path.join(out, "log.txt")).read()
    assert "60 images" in log and "skipped 2 unreadable" in log
