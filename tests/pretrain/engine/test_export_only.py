"""``python -m pretrain.engine.train ... --export-only`` reads checkpoints as resume does: a truncated newest one is
skipped, named, and the backbone comes from the older one."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.support.runs import run_train
from tests.support.tiny import tiny_overrides


def _run(args) -> tuple[int, str]:
    p = run_train(args)
    log = p.communicate(timeout=300)[0]
    return p.returncode, log


def _backbone(out: str) -> dict:
    return torch.load(os.path.join(out, "backbone.pth"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def exports(toy_images, tmp_path_factory):
    """A 6-iteration run (checkpoints after iterations 2 and 5, backbone exported at the end); then, in a copy whose
    newest checkpoint is deleted and in the run whose newest checkpoint is truncated, ``--export-only``."""
    tmp = tmp_path_factory.mktemp("export_only")
    out, without = str(tmp / "run"), str(tmp / "without_newest")
    extra = {"train.max_iterations": 6, "train.checkpoint_every": 3}
    rc, log = _run(tiny_overrides(toy_images, out, **extra))
    assert rc == 0, log
    trained = _backbone(out)
    shutil.copytree(out, without)
    os.remove(os.path.join(without, "checkpoints", "ckpt_00000005.pth"))
    rc_ref, log_ref = _run(tiny_overrides(toy_images, without, **extra) + ["--export-only"])
    newest = os.path.join(out, "checkpoints", "ckpt_00000005.pth")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    rc_cut, log_cut = _run(tiny_overrides(toy_images, out, **extra) + ["--export-only"])
    return dict(
        newest=newest,
        trained=trained,
        ref=(rc_ref, log_ref, _backbone(without)),
        cut=(rc_cut, log_cut, _backbone(out)),
    )


@pytest.mark.slow
def test_export_only_skips_a_truncated_newest_checkpoint_naming_it(exports):
    rc, log, _ = exports["cut"]
    assert rc == 0, log
    assert f"skipping unreadable checkpoint {exports['newest']}" in log


@pytest.mark.slow
def test_export_only_past_a_truncated_checkpoint_exports_the_older_checkpoints_backbone(exports):
    rc_ref, log_ref, ref = exports["ref"]
    _, _, got = exports["cut"]
    assert rc_ref == 0, log_ref
    assert got["meta"]["iteration"] == ref["meta"]["iteration"] < exports["trained"]["meta"]["iteration"]
    assert got["model"].keys() == ref["model"].keys()
    assert all(torch.equal(got["model"][k], ref["model"][k]) for k in ref["model"])


@pytest.mark.slow
def test_export_only_past_a_truncated_checkpoint_differs_from_the_newest_weights(exports):
    _, _, got = exports["cut"]
    trained = exports["trained"]["model"]
    assert any(not torch.equal(got["model"][k], trained[k]) for k in trained)
