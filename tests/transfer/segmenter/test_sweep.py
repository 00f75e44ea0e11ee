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


class _FakeRunner:
    """Records each command and writes the metrics of a finished run into its work dir."""

    def __init__(self):
        self.calls = []

    def __call__(self, cmd, log_path):
        self.calls.append(cmd)
        out = cmd[cmd.index("--work-dir") + 1]
        lr, seed = float(cmd[cmd.index("--lr") + 1]), int(cmd[cmd.index("--seed") + 1])
        os.makedirs(out, exist_ok=True)
        json.dump(_fake_metrics(lr, seed), open(os.path.join(out, "metrics_final.json"), "w"))
        return 0


def _sweep(argv):
    """``sweep.main`` on a single node with one process; ``(return code, commands launched)``."""
    runner = _FakeRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GPUS", raising=False)
        mp.delenv("NNODES", raising=False)
        return sweep.main(argv, runner=runner), runner.calls


@pytest.fixture(scope="module")
def sweep_args(tmp_path_factory):
    """Two lrs x one wd x two seeds, with one extra ``key=value``; ``(argv, work dir)``."""
    tmp = tmp_path_factory.mktemp("sweep")
    cfg_path, ckpt = str(tmp / "cfg.py"), str(tmp / "ck.pth")
    open(cfg_path, "w").write("x = 1\n")
    open(ckpt, "wb").write(b"0")
    work = str(tmp / "work")
    argv = [cfg_path, ckpt, "--lrs", "8e-5,1e-5", "--wds", "1e-4", "--seeds", "2", "--work-dir", work, "a.b=1"]
    return argv, work


@pytest.fixture(scope="module")
def fresh_sweep(sweep_args):
    """The first sweep, with the summaries it wrote (read before the later sweeps rewrite them)."""
    argv, work = sweep_args
    rc, calls = _sweep(argv)
    rows = list(csv.DictReader(open(os.path.join(work, "summary.csv"))))
    md = open(os.path.join(work, "summary.md")).read()
    return dict(rc=rc, calls=calls, rows=rows, md=md)


@pytest.fixture(scope="module")
def repeated_sweep(sweep_args, fresh_sweep):
    """The same sweep again, everything finished."""
    rc, calls = _sweep(sweep_args[0])
    return dict(rc=rc, calls=calls)


@pytest.fixture(scope="module")
def interrupted_sweep(sweep_args, repeated_sweep):
    """The same sweep after one run lost its metrics but kept a checkpoint (an interruption)."""
    argv, work = sweep_args
    out = os.path.join(work, "lr1e-05_wd0.0001", "seed0")
    os.remove(os.path.join(out, "metrics_final.json"))
    open(os.path.join(out, "iter_5.pth"), "wb").write(b"0")
    open(os.path.join(out, "last_checkpoint"), "w").write(os.path.join(out, "iter_5.pth"))
    rc, calls = _sweep(argv)
    return dict(rc=rc, calls=calls)


@pytest.mark.parametrize("phase", ["fresh_sweep", "repeated_sweep", "interrupted_sweep"])
def test_a_sweep_whose_runs_succeed_exits_zero(request, phase):
    assert request.getfixturevalue(phase)["rc"] == 0


def test_a_fresh_sweep_launches_one_run_per_point_and_seed(fresh_sweep):
    assert len(fresh_sweep["calls"]) == 4


def test_runs_are_launched_as_the_training_entry_under_this_python(fresh_sweep):
    assert fresh_sweep["calls"][0][:3] == [sys.executable, "-m", "transfer.segmenter.train"]


def test_extra_key_value_pairs_go_to_cfg_options_at_the_end_of_the_command(fresh_sweep):
    assert fresh_sweep["calls"][0][-2:] == ["--cfg-options", "a.b=1"]


def test_a_fresh_run_is_not_resumed(fresh_sweep):
    assert "--resume" not in fresh_sweep["calls"][0]


def test_each_run_trains_in_a_folder_of_its_point_and_seed(sweep_args, fresh_sweep):
    _, work = sweep_args
    assert os.path.isdir(os.path.join(work, "lr8e-05_wd0.0001", "seed1"))


def test_summary_csv_has_one_row_per_point(fresh_sweep):
    assert len(fresh_sweep["rows"]) == 2


def test_summary_csv_counts_the_finished_seeds_of_each_point(fresh_sweep):
    for row in fresh_sweep["rows"]:
        assert int(row["num_seeds"]) == 2


def _over_seeds(row, key):
    return np.array([_fake_metrics(float(row["lr"]), s)[key] for s in (0, 1)])


@pytest.mark.parametrize("key", ["mIoU", "aAcc", "mAcc"])
def test_summary_csv_reports_the_mean_over_seeds(fresh_sweep, key):
    for row in fresh_sweep["rows"]:
        assert math.isclose(float(row[f"{key}_mean"]), _over_seeds(row, key).mean(), abs_tol=1e-4)


@pytest.mark.parametrize("key", ["mIoU", "aAcc", "mAcc"])
def test_summary_csv_reports_the_population_std_over_seeds(fresh_sweep, key):
    for row in fresh_sweep["rows"]:
        assert math.isclose(float(row[f"{key}_std"]), _over_seeds(row, key).std(), abs_tol=1e-4)


def test_summary_csv_marks_the_highest_mean_miou_point_as_the_only_best(fresh_sweep):
    best = [r for r in fresh_sweep["rows"] if r["best"] == "1"]
    assert len(best) == 1 and float(best[0]["lr"]) == 8e-5


def test_summary_md_marks_the_best_point(fresh_sweep):
    assert "**best**" in fresh_sweep["md"]


def test_summary_md_tabulates_a_point_with_its_seed_count(fresh_sweep):
    assert "| 8e-05 | 0.0001 | 2 |" in fresh_sweep["md"]


def test_repeating_a_finished_sweep_launches_nothing(repeated_sweep):
    assert repeated_sweep["calls"] == []


def test_after_an_interruption_only_the_unfinished_run_is_launched_again(interrupted_sweep):
    assert len(interrupted_sweep["calls"]) == 1


def test_an_interrupted_run_is_launched_again_with_resume(interrupted_sweep):
    assert "--resume" in interrupted_sweep["calls"][0]


# the grid and the launcher


def test_the_default_grid_with_two_seeds_is_16_runs():
    assert len(sweep.plan_runs(sweep.SWEEP_LRS, sweep.SWEEP_WDS, 2)) == 16


def test_the_default_grid_is_the_papers_lrs_and_weight_decays():
    assert set(sweep.SWEEP_LRS) == {8e-5, 3e-5, 1e-5, 8e-6} and set(sweep.SWEEP_WDS) == {1e-2, 1e-4}


@pytest.fixture(scope="module")
def multi_node_command():
    env = dict(GPUS="4", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="1234")
    return sweep.build_command("c.py", "k.pth", "out", 3e-5, 1e-2, 1, env=env)


@pytest.fixture(scope="module")
def single_process_command():
    return sweep.build_command("c.py", "k.pth", "out", 3e-5, 1e-2, 1, env={})


def test_several_processes_are_launched_through_torch_distributed_run(multi_node_command):
    assert multi_node_command[1:3] == ["-m", "torch.distributed.run"]


def test_the_distributed_launch_forwards_the_node_topology(multi_node_command):
    for flag in ("--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=1234", "--nproc_per_node=4"):
        assert flag in multi_node_command


def test_the_distributed_launch_uses_the_pytorch_launcher(multi_node_command):
    assert multi_node_command[multi_node_command.index("--launcher") + 1] == "pytorch"


def test_a_single_process_runs_the_training_entry_directly(single_process_command):
    assert single_process_command[1:3] == ["-m", "transfer.segmenter.train"]


def test_a_single_process_uses_no_launcher(single_process_command):
    assert single_process_command[single_process_command.index("--launcher") + 1] == "none"


def test_train_ade_sh_is_valid_bash():
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "tools", "train_ade.sh")]).returncode == 0
