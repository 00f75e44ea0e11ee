"""tools/results.py: list, compare (mean ± std over repeats) and plot."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os

import pytest

from resultsdb import record_result
from tests.support.paths import REPO


def results_main(argv):
    """``tools/results.py``'s ``main`` (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tool_results", os.path.join(REPO, "tools", "results.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


@pytest.fixture
def filled(tmp_path):
    db = str(tmp_path / "r.sqlite")
    ckpt = tmp_path / "demo" / "backbone.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not a torch file")  # hashed; no method in it: the row is its folder name
    for seed, v in enumerate([0.5, 0.7]):
        record_result(str(ckpt), "cls_knn", {"top1": v}, seed=seed, db=db)
    record_result(str(ckpt), "cls_knn", {"top1": 0.1}, random_init=True, db=db)
    record_result(str(ckpt), "probe_dense", {"nn/miou": 0.3, "linear/miou": 0.4}, db=db, output_dir=str(tmp_path / "e"))
    return db


def test_compare_markdown_mean_std(filled, capsys):
    assert results_main(["--db", filled, "compare"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| method | n | cls_knn:top1 | probe_dense:nn/miou | probe_dense:linear/miou |"
    # std of (0.5, 0.7) with ddof 1: 0.1414
    assert out[2] == "| demo | 2 | 0.6000 ± 0.1414 | 0.3000 | 0.4000 |"
    assert out[3] == "| demo (random init) | 1 | 0.1000 | - | - |"


def test_compare_csv_and_filters(filled, capsys):
    assert results_main(["--db", filled, "compare", "--format", "csv", "--metrics", "cls_knn:*"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["row"] for r in rows] == ["demo", "demo (random init)"]
    assert math.isclose(float(rows[0]["cls_knn:top1:std"]), math.sqrt(0.02), rel_tol=1e-5)
    assert rows[0]["cls_knn:top1:n"] == "2"


def test_under_keeps_the_records_of_one_output_folder(filled, tmp_path, capsys):
    assert results_main(["--db", filled, "compare", "--under", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| method | n | probe_dense:nn/miou | probe_dense:linear/miou |" and len(out) == 3


def test_list_and_plot(filled, tmp_path, capsys):
    assert results_main(["--db", filled, "list", "--last", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "probe_dense" in lines[-1] and "random init" in lines[-2]
    png = tmp_path / "p.png"
    assert results_main(["--db", filled, "plot", "--metrics", "cls_knn:*", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 10)
    assert results_main(["--db", str(bad), "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("results: error:") and "\n" not in err
    assert results_main(["--db", str(tmp_path / "none.sqlite"), "compare"]) == 2


def test_compare_splits_one_protocol_run_under_two_settings(tmp_path, capsys):
    """Same protocol, different config (not just seed / variant): never one column; a note says what differs."""
    db = str(tmp_path / "r.sqlite")
    ckpt = tmp_path / "demo" / "backbone.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    for seed, v in enumerate([0.5, 0.7]):  # seeds and the variant stay in one setting
        record_result(str(ckpt), "maxa", {"iou": v}, {"size": 96, "steps": 150, "seed": seed}, seed=seed, db=db)
    record_result(
        str(ckpt), "maxa", {"iou": 0.2}, {"size": 96, "steps": 150, "random_init": True}, random_init=True, db=db
    )
    record_result(str(ckpt), "maxa", {"iou": 0.9}, {"size": 96, "steps": 1000}, db=db)
    assert results_main(["--db", db, "compare", "--metrics", "maxa:iou"]) == 0
    out = capsys.readouterr().out.splitlines()
    from resultsdb.table import setting_hash

    quick = setting_hash({"config": {"size": 96, "steps": 150}})[:8]
    full = setting_hash({"config": {"size": 96, "steps": 1000}})[:8]
    assert out[0] == f"| method | n | maxa[{quick}]:iou | maxa[{full}]:iou |"
    assert out[2] == "| demo | 2 | 0.6000 ± 0.1414 | 0.9000 |"
    assert out[3] == "| demo (random init) | 1 | 0.2000 | - |"
    assert out[5].startswith("note: maxa ran under 2 settings") and "steps=150" in out[5] and "steps=1000" in out[5]
    assert "size=" not in out[5]  # only what differs
    # one setting kept: back to one plain column, no note
    assert results_main(["--db", db, "compare", "--setting", quick]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| method | n | maxa:iou |" and len(out) == 4
    # csv: the note goes to stderr, the table stays CSV
    assert results_main(["--db", db, "compare", "--format", "csv"]) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines()[0].startswith(f"row,maxa[{quick}]:iou,") and cap.err.startswith("note: maxa")
