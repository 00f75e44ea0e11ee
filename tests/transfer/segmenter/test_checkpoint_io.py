"""Segmenter checkpoints are written atomically (transfer/segmenter/checkpoint_io.py): a process killed during a save
leaves no partial ``iter_N.pth``, the previous checkpoint stays intact and the next ``--resume`` continues from it."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmengine.runner.checkpoint import save_checkpoint  # noqa: E402

from tests.support.paths import REPO  # noqa: E402
from tests.transfer.segmenter.helpers import TOY_CFG  # noqa: E402
from transfer.segmenter import checkpoint_io  # noqa: E402

# The real module CLI, but with SIGXFSZ back at its default action (CPython ignores it): a write past the file-size
# limit then kills the process in the middle of the checkpoint write, as kill -9 would.
_KILLABLE_ENTRY = (
    "import runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
    "sys.argv = ['transfer.segmenter.train'] + sys.argv[1:]; "
    "runpy.run_module('transfer.segmenter.train', run_name='__main__')"
)


def _entry(args, file_size_limit=None):
    def limit():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", _KILLABLE_ENTRY, TOY_CFG, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def killed_during_save(ref_ckpt, toy_root, tmp_path_factory):
    """5 iterations (``iter_5.pth``); then ``--resume`` to 10 with a file-size limit of half a checkpoint, so the
    process dies while writing ``iter_10.pth``; then the same ``--resume`` without the limit."""
    _, init = ref_ckpt
    work = str(tmp_path_factory.mktemp("killed") / "run")
    common = ["--init", init, "--work-dir", work, "--data-root", toy_root, "--seed", "0", "--cfg-options"]
    common += ["default_hooks.checkpoint.interval=5", "train_cfg.val_interval=5", "default_hooks.logger.interval=5"]
    first = _entry(["--max-iters", "5"] + common)
    assert first.returncode == 0, first.stderr[-3000:]
    iter5 = os.path.join(work, "iter_5.pth")
    before = _digest(iter5)
    killed = _entry(["--max-iters", "10", "--resume"] + common, file_size_limit=os.path.getsize(iter5) // 2)
    left = sorted(os.listdir(work))
    after = _digest(iter5)
    resumed = _entry(["--max-iters", "10", "--resume"] + common)
    return dict(work=work, killed=killed, left=left, intact=before == after, resumed=resumed)


@pytest.mark.slow
def test_the_process_dies_in_the_middle_of_writing_the_checkpoint(killed_during_save):
    killed = killed_during_save["killed"]
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-3000:]
    assert any(name.startswith(".tmp-") for name in killed_during_save["left"])  # the write had begun


@pytest.mark.slow
def test_a_save_killed_midway_leaves_no_file_under_the_final_name(killed_during_save):
    assert "iter_10.pth" not in killed_during_save["left"]


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_checkpoint_intact(killed_during_save):
    assert killed_during_save["intact"]


@pytest.mark.slow
def test_the_next_resume_removes_the_temporary_and_continues_from_the_intact_checkpoint(killed_during_save):
    resumed = killed_during_save["resumed"]
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "left by an interrupted checkpoint write" in out and "resumed at iteration 5" in out
    names = os.listdir(killed_during_save["work"])
    assert "iter_10.pth" in names and not [n for n in names if n.startswith(".tmp-")]
    state = torch.load(os.path.join(killed_during_save["work"], "iter_10.pth"), map_location="cpu", weights_only=False)
    assert state["meta"]["iter"] == 10


def test_mmengines_save_through_the_atomic_backend_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "iter_1.pth"
    save_checkpoint({"w": torch.ones(3)}, str(path), backend_args={"backend": checkpoint_io.BACKEND})
    old = _digest(path)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match=f"writing {path} failed"):
        save_checkpoint({"w": torch.zeros(1000)}, str(path), backend_args={"backend": checkpoint_io.BACKEND})
    assert _digest(path) == old and os.listdir(tmp_path) == ["iter_1.pth"]


def test_the_entry_selects_the_atomic_backend_for_the_checkpoint_hook():
    from mmengine.config import Config

    cfg = Config.fromfile(TOY_CFG)
    assert checkpoint_io.use_atomic_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint.backend_args == {"backend": "atomic_local"}


def test_a_checkpoint_hook_with_a_backend_of_its_own_keeps_it():
    from mmengine.config import Config

    cfg = Config.fromfile(TOY_CFG)
    cfg.default_hooks.checkpoint["backend_args"] = {"backend": "petrel"}
    assert not checkpoint_io.use_atomic_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint.backend_args == {"backend": "petrel"}


@pytest.mark.parametrize("content", ["", "/some/work_dir/iter_", "\x00\x00"])
def test_a_cut_last_checkpoint_is_pointed_at_the_newest_complete_checkpoint(tmp_path, content):
    for name in ("iter_4.pth", "iter_12.pth", "iter_8.pth", "epoch_30.pth"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text(content)
    msg = checkpoint_io.repair_last_checkpoint(str(tmp_path))
    assert msg and "rewrote" in msg
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_12.pth")
    assert checkpoint_io.repair_last_checkpoint(str(tmp_path)) is None  # now valid: left alone


def test_a_last_checkpoint_without_any_checkpoint_is_removed(tmp_path):
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_4.pth"))
    assert "removed" in checkpoint_io.repair_last_checkpoint(str(tmp_path))
    assert not (tmp_path / "last_checkpoint").exists()
    assert checkpoint_io.repair_last_checkpoint(str(tmp_path)) is None
