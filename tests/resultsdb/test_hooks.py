"""Records written at the end of pretraining (a real tiny run), ViTDet and Segmenter final metrics."""

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
