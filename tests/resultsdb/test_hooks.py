"""Records written at the end of pretraining (a real tiny run), ViTDet and Segmenter final metrics, Segmenter sweeps."""

from __future__ import annotations

import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from resultsdb import ResultsDB
from resultsdb.hooks import last_logged_row, record_segmenter, record_vitdet
from tests.support.runs import read_rows, run_train
from tests.support.tiny import tiny_overrides


@pytest.fixture
def db_path(tmp_path, monkeypatch):
    path = str(tmp_path / "results.sqlite")
    monkeypatch.setenv("SSLVIT_RESULTS_DB", path)
    return path


def _records(path):
    with ResultsDB(path, create=False) as db:
        return db.records()


def test_pretraining_end_records_the_exported_backbone(toy_images, tmp_path, db_path):
    out = str(tmp_path / "run")
    p = run_train(tiny_overrides(toy_images, out, **{"train.max_iterations": 3}))  # env carries the db path
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0, log
    (r,) = _records(db_path)
    last = read_rows(out)[-1]
    assert r["protocol"] == "pretrain" and r["method"] == "intertwined"
    assert r["checkpoint"] == os.path.join(out, "backbone.pth")
    assert r["metrics"]["loss"] == pytest.approx(last["loss"]) and r["metrics"]["iteration"] == last["iteration"]
    assert r["config"]["train"]["output_dir"] == out and r["seed"] == 0
    meta = torch.load(r["checkpoint"], map_location="cpu", weights_only=True)["meta"]
    assert meta["method"] == r["method"]


def test_last_logged_row_skips_events_and_junk(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"iteration": 0, "loss": 2.0}, {"event": "x"}, {"iteration": 1, "loss": 1.5}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{truncated")
    assert last_logged_row(str(path)) == rows[2]
    assert last_logged_row(str(tmp_path / "missing.jsonl")) == {}


def test_vitdet_and_segmenter_records(db_path, tmp_path):
    ckpt = tmp_path / "d2.pkl"
    ckpt.write_bytes(b"weights")
    final = {"bbox": {"AP": 12.5, "AP50": None}, "segm": {"AP": 10.0}, "iteration": 9, "eval_only": False}
    final.update(config_file="/c.py", init_checkpoint=str(ckpt))
    cfg = OmegaConf.create({"train": {"seed": 4, "output_dir": str(tmp_path / "vd")}})
    assert record_vitdet(final, cfg, ["train.max_iter=9"]) == 1
    seg = {"mIoU": 41.2, "aAcc": 80.0, "mAcc": 50.1, "seed": 2, "lr": 1e-4, "init": str(ckpt), "work_dir": "/w"}
    assert record_segmenter(seg) == 2
    vd, sg = _records(db_path)
    assert vd["protocol"] == "vitdet" and vd["metrics"] == {"bbox/AP": 12.5, "segm/AP": 10.0} and vd["seed"] == 4
    assert vd["config"]["opts"] == ["train.max_iter=9"] and vd["checkpoint_sha256"] == sg["checkpoint_sha256"]
    assert sg["metrics"] == {"mIoU": 41.2, "aAcc": 80.0, "mAcc": 50.1} and sg["seed"] == 2
    assert sg["config"]["lr"] == 1e-4 and sg["output_dir"] == "/w"


def _point(lr, wd, miou, std, n, best=False):
    return dict(
        lr=lr,
        wd=wd,
        num_seeds=n,
        best=best,
        mIoU_mean=miou,
        mIoU_std=std,
        aAcc_mean=80.0,
        aAcc_std=0.5,
        mAcc_mean=30.0,
        mAcc_std=1.0,
    )


def test_sweep_aggregate_record(db_path, tmp_path):
    from resultsdb.hooks import record_sweep

    rows = [_point(8e-5, 1e-2, 20.0, 1.0, 2, best=True), _point(3e-5, 1e-2, 10.0, 0.0, 1)]
    rows.append(dict(_point(1e-5, 1e-2, float("nan"), float("nan"), 0)))  # no finished seed: left out
    grid = dict(config="cfg.py", lrs=[8e-5, 3e-5, 1e-5], wds=[1e-2], num_seeds=2)
    assert record_sweep(rows, str(tmp_path / "none.pth"), grid, str(tmp_path)) is not None
    (r,) = _records(db_path)
    m = r["metrics"]
    assert r["protocol"] == "segmenter_sweep" and r["config"] == grid and r["output_dir"] == str(tmp_path)
    assert m["best/mIoU"] == 20.0 and m["best/mIoU_std"] == 1.0 and m["best/lr"] == 8e-5 and m["best/num_seeds"] == 2
    assert m["points/mIoU_mean"] == 15.0 and m["points/mIoU_std"] == 5.0  # population std of (20, 10)
    assert m["points"] == 2 and m["runs"] == 3
    assert record_sweep([_point(1e-5, 1e-2, float("nan"), float("nan"), 0)], None, grid, str(tmp_path)) is None


def test_the_sweep_command_records_its_aggregate_once_per_sweep_that_trained(db_path, tmp_path):
    pytest.importorskip("mmseg")
    from transfer.segmenter import sweep

    def runner(cmd, log_path):  # a finished run: metrics by lr and seed
        out, lr = cmd[cmd.index("--work-dir") + 1], float(cmd[cmd.index("--lr") + 1])
        seed = int(cmd[cmd.index("--seed") + 1])
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics_final.json"), "w") as fh:
            json.dump(dict(mIoU=1e5 * lr + seed, aAcc=70.0, mAcc=20.0), fh)
        return 0

    (tmp_path / "cfg.py").write_text("x = 1\n")
    (tmp_path / "ck.pth").write_bytes(b"0")
    argv = [str(tmp_path / "cfg.py"), str(tmp_path / "ck.pth"), "--lrs", "8e-5,1e-5", "--wds", "1e-4", "--seeds", "2"]
    argv += ["--work-dir", str(tmp_path / "work")]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GPUS", raising=False)
        mp.delenv("NNODES", raising=False)
        assert sweep.main(argv, runner=runner) == 0
        assert sweep.main(argv, runner=runner) == 0  # everything finished: nothing launched, nothing recorded
    (r,) = _records(db_path)
    assert r["protocol"] == "segmenter_sweep" and r["checkpoint"] == str(tmp_path / "ck.pth")
    assert r["metrics"]["best/mIoU"] == pytest.approx(8.5) and r["metrics"]["best/lr"] == 8e-5  # seeds 8, 9
    assert r["metrics"]["runs"] == 4 and r["config"]["num_seeds"] == 2
