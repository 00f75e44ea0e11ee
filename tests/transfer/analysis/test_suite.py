"""tools/evaluate.sh (its smoke suite): every step runs, the summary equals the steps' own files, the numbers land in
the database, and a failing step is reported while the others still run."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest

from resultsdb import ResultsDB
from tests.support.paths import REPO
from toydata import make_toy_ade, make_toy_coco, make_toy_images


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    """A data root as the suite expects: ade_texture/, images/, coco/val/ (small)."""
    root = tmp_path_factory.mktemp("toy")
    make_toy_ade(str(root / "ade_texture"), num_train=4, num_val=2, image_size=(64, 64), seed=0, num_classes=4)
    make_toy_images(str(root / "images"), num_images=6, size=(64, 64), seed=0)
    make_toy_coco(str(root / "coco"), num_train=2, num_val=2, image_size=(64, 64), seed=0)
    return str(root)


def _evaluate(args, db):
    env = dict(os.environ, SSLVIT_RESULTS_DB=db, OMP_NUM_THREADS="1")  # conftest's 2 threads are not inherited
    return subprocess.run(
        [os.path.join(REPO, "tools", "evaluate.sh"), *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_quick_suite_summary_and_records(tiny_ckpts, toy_root, tmp_path):
    _, paths = tiny_ckpts
    out, db = tmp_path / "eval", str(tmp_path / "r.sqlite")
    p = _evaluate([paths[0], "--suite", "smoke", "--data", toy_root, "--out", str(out)], db)
    assert p.returncode == 0, p.stdout + p.stderr
    status = json.loads((out / "status.json").read_text())
    assert sorted(status) == ["attention", "cls_knn", "localrep", "maxa", "probe_dense", "probe_position"]
    with open(out / "summary.csv") as fh:
        summary = {(r["probe"], r["metric"]): float(r["value"]) for r in csv.DictReader(fh)}
    knn = json.loads((out / "cls_knn" / "cls_knn.json").read_text())["top1"]
    assert summary[("cls_knn", "CLS 5-NN top-1 (toy textures)")] == pytest.approx(knn, abs=1e-5)
    pos = json.loads((out / "probe_position" / "position_accuracy.json").read_text())
    assert summary[("probe_position", "position chance level")] == pytest.approx(pos["chance"])
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG" and "| cls_knn |" in (out / "summary.md").read_text()
    with ResultsDB(db, create=False) as store:
        recs = store.records()
    assert sorted(r["protocol"] for r in recs) == [
        "attention",
        "cls_knn",
        "localrep",
        "maxa",
        "position_accuracy",
        "probe_dense",
    ]
    maxa = json.loads((out / "maxa" / "maxa_results.json").read_text())["tasks"]
    assert summary[("maxa", "MAXA instance discrimination ARI")] == pytest.approx(maxa["instances"]["ari"], abs=1e-5)
    assert {r["checkpoint"] for r in recs} == {paths[0]}
    assert next(r for r in recs if r["protocol"] == "cls_knn")["metrics"]["top1"] == pytest.approx(knn)


def test_a_failing_step_is_reported_and_the_rest_runs(tiny_ckpts, toy_root, tmp_path):
    _, paths = tiny_ckpts
    bad_root = tmp_path / "bad"
    os.makedirs(bad_root / "ade_texture")  # no images in it: probe_dense fails
    os.symlink(os.path.join(toy_root, "images"), bad_root / "images")
    os.symlink(os.path.join(toy_root, "coco"), bad_root / "coco")
    out = tmp_path / "eval"
    p = _evaluate([paths[0], "--suite", "smoke", "--data", str(bad_root), "--out", str(out), "--random-init"], "none")
    assert p.returncode == 1
    status = json.loads((out / "status.json").read_text())
    assert status["probe_dense"]["rc"] != 0 and status["maxa"]["rc"] != 0  # both read ade_texture
    assert status["cls_knn"]["rc"] == 0 and status["probe_position"]["rc"] == 0
    assert "attention" not in status  # no random-init baseline for attention
    assert "probe_dense | failed" in (out / "summary.md").read_text()
    assert "FAILED" in p.stdout


def test_missing_checkpoint_or_data_is_a_usage_error(tmp_path):
    p = _evaluate([str(tmp_path / "none.pth")], "none")
    assert p.returncode == 2 and "no checkpoint file" in p.stderr
