"""Sweep bookkeeping: summary, skipping finished points, the grid and the launcher."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")


from tests.support.paths import REPO
from transfer.segmenter import sweep  # noqa: E402


# sweep bookkeeping
def _fake_metrics(lr, seed):
    return dict(mIoU=10 + 1e5 * lr + 3 * seed, aAcc=70 + seed, mAcc=20 + 2e5 * lr - seed)


def test_sweep_summary_and_skip(tmp_path, monkeypatch):
    cfg_path, ckpt = str(tmp_path / "cfg.py"), str(tmp_path / "ck.pth")
    open(cfg_path, "w").write("x = 1\n")
    open(ckpt, "wb").write(b"0")
    work = str(tmp_path / "work")
    calls = []

    def fake_run(cmd, log_path):
        calls.append(cmd)
        out = cmd[cmd.index("--work-dir") + 1]
        lr, seed = float(cmd[cmd.index("--lr") + 1]), int(cmd[cmd.index("--seed") + 1])
        os.makedirs(out, exist_ok=True)
        json.dump(_fake_metrics(lr, seed), open(os.path.join(out, "metrics_final.json"), "w"))
        return 0

    monkeypatch.delenv("GPUS", raising=False)
    monkeypatch.delenv("NNODES", raising=False)
    argv = [cfg_path, ckpt, "--lrs", "8e-5,1e-5", "--wds", "1e-4", "--seeds", "2", "--work-dir", work, "a.b=1"]
    assert sweep.main(argv, runner=fake_run) == 0
    assert len(calls) == 4
    assert calls[0][:3] == [sys.executable, "-m", "transfer.segmenter.train"]
    assert calls[0][-2:] == ["--cfg-options", "a.b=1"] and "--resume" not in calls[0]
    assert os.path.isdir(os.path.join(work, "lr8e-05_wd0.0001", "seed1"))

    rows = list(csv.DictReader(open(os.path.join(work, "summary.csv"))))
    assert len(rows) == 2
    for row in rows:
        lr = float(row["lr"])
        assert int(row["num_seeds"]) == 2
        for key in ("mIoU", "aAcc", "mAcc"):
            vals = np.array([_fake_metrics(lr, s)[key] for s in (0, 1)])
            assert math.isclose(float(row[f"{key}_mean"]), vals.mean(), abs_tol=1e-4)
            assert math.isclose(float(row[f"{key}_std"]), vals.std(), abs_tol=1e-4)
    best = [r for r in rows if r["best"] == "1"]
    assert len(best) == 1 and float(best[0]["lr"]) == 8e-5
    md = open(os.path.join(work, "summary.md")).read()
    assert "**best**" in md and "| 8e-05 | 0.0001 | 2 |" in md

    # rerun: everything finished -> nothing runs
    calls.clear()
    assert sweep.main(argv, runner=fake_run) == 0
    assert calls == []
    # an interrupted run (checkpoint, no metrics) is resumed, the others stay skipped
    out = os.path.join(work, "lr1e-05_wd0.0001", "seed0")
    os.remove(os.path.join(out, "metrics_final.json"))
    open(os.path.join(out, "iter_5.pth"), "wb").write(b"0")
    open(os.path.join(out, "last_checkpoint"), "w").write(os.path.join(out, "iter_5.pth"))
    assert sweep.main(argv, runner=fake_run) == 0
    assert len(calls) == 1 and "--resume" in calls[0]


def test_sweep_grid_and_launcher(monkeypatch):
    assert len(sweep.plan_runs(sweep.SWEEP_LRS, sweep.SWEEP_WDS, 2)) == 16
    assert set(sweep.SWEEP_LRS) == {8e-5, 3e-5, 1e-5, 8e-6} and set(sweep.SWEEP_WDS) == {1e-2, 1e-4}
    env = dict(GPUS="4", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="1234")
    cmd = sweep.build_command("c.py", "k.pth", "out", 3e-5, 1e-2, 1, env=env)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    for flag in ("--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=1234", "--nproc_per_node=4"):
        assert flag in cmd
    assert cmd[cmd.index("--launcher") + 1] == "pytorch"
    cmd = sweep.build_command("c.py", "k.pth", "out", 3e-5, 1e-2, 1, env={})
    assert cmd[1:3] == ["-m", "transfer.segmenter.train"] and cmd[cmd.index("--launcher") + 1] == "none"
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "tools", "train_ade.sh")]).returncode == 0
