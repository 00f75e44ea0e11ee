"""The results database: round trip, hash cache, concurrent writers, corrupt and foreign files, failure safety."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sqlite3

import pytest
import torch

from resultsdb import ResultsDB, ResultsDBError, record_result
from resultsdb.db import SCHEMA_VERSION
from resultsdb.provenance import file_identity, flatten_metrics


@pytest.fixture
def db_path(tmp_path, monkeypatch):
    path = str(tmp_path / "res" / "results.sqlite")
    monkeypatch.setenv("SSLVIT_RESULTS_DB", path)
    return path


@pytest.fixture
def backbone(tmp_path):
    path = str(tmp_path / "backbone.pth")
    torch.save({"model": {"w": torch.arange(6.0)}, "meta": {"method": "droppos"}}, path)
    return path


def test_record_round_trip_with_provenance(db_path, backbone):
    rid = record_result(
        backbone, "probe_dense", {"nn": {"miou": 0.25}, "acc": 0.5, "flag": True}, config={"size": 96}, seed=3
    )
    assert rid == 1
    with ResultsDB(db_path, create=False) as db:
        (r,) = db.records()
    with open(backbone, "rb") as fh:
        assert r["checkpoint_sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert r["method"] == "droppos" and r["variant"] == "trained" and r["seed"] == 3
    assert r["metrics"] == {"nn/miou": 0.25, "acc": 0.5}  # nested flattened, booleans dropped
    assert r["config"] == {"size": 96} and len(r["config_hash"]) == 16
    assert r["checkpoint"] == os.path.abspath(backbone)
    assert r["machine"]["torch"] == torch.__version__ and r["machine"]["device"] == "cpu"
    assert r["code_version"] and r["time"].endswith("+00:00")
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_hash_cache_is_keyed_by_path_mtime_and_size(db_path, backbone):
    with ResultsDB(db_path) as db:
        real = file_identity(backbone, db)[0]
        st = os.stat(backbone)
        db.cache_hash(os.path.abspath(backbone), st.st_mtime_ns, st.st_size, "cached", "m")
        assert file_identity(backbone, db) == ("cached", "m")  # served from the cache, file not read
        os.utime(backbone, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert file_identity(backbone, db)[0] == real  # mtime changed: hashed again


def _writer(args):
    path, proc, n = args
    os.environ["SSLVIT_RESULTS_DB"] = path
    return [record_result(None, "stress", {"proc": proc, "i": i}, seed=i) for i in range(n)]


def test_concurrent_writers_lose_nothing(db_path):
    ctx = mp.get_context("fork")  # separate processes, separate sqlite connections
    with ctx.Pool(4) as pool:
        ids = pool.map(_writer, [(db_path, p, 25) for p in range(4)])
    assert all(i is not None for chunk in ids for i in chunk)
    with ResultsDB(db_path, create=False) as db:
        rows = db.records("stress")
    assert len(rows) == 100
    assert sorted((r["metrics"]["proc"], r["metrics"]["i"]) for r in rows) == [
        (p, i) for p in range(4) for i in range(25)
    ]


def test_corrupt_file_is_a_one_line_error_and_left_untouched(tmp_path, caplog):
    path = tmp_path / "results.sqlite"
    junk = b"this is not a database\n" * 50
    path.write_bytes(junk)
    with pytest.raises(ResultsDBError, match="not an sqlite database") as err:
        ResultsDB(str(path))
    assert "\n" not in str(err.value)
    assert record_result(None, "x", {"a": 1.0}, db=str(path)) is None  # warns, does not raise
    assert "x not recorded" in caplog.text and "not an sqlite database" in caplog.text
    assert path.read_bytes() == junk


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1])
def test_other_schema_version_is_refused_and_left_untouched(tmp_path, version):
    path = str(tmp_path / "old.sqlite")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE records (id INTEGER)")
        conn.execute(f"PRAGMA user_version={version}")
    before = open(path, "rb").read()
    with pytest.raises(ResultsDBError, match="this code reads and writes version"):
        ResultsDB(path)
    assert record_result(None, "x", {"a": 1.0}, db=path) is None
    assert open(path, "rb").read() == before


def test_unwritable_location_keeps_the_run_going(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert record_result(None, "x", {"a": 1.0}, db=str(blocker / "sub" / "r.sqlite")) is None


def test_disabled_and_empty_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLVIT_RESULTS_DB", "off")
    assert record_result(None, "x", {"a": 1.0}) is None
    assert record_result(None, "x", {"a": "text"}, db=str(tmp_path / "r.sqlite")) is None  # nothing numeric
    assert flatten_metrics({"a": {"b": 1, "c": [1]}, "d": 2.5}) == {"a/b": 1.0, "d": 2.5}


def test_reader_does_not_create_a_missing_file(tmp_path):
    path = tmp_path / "missing.sqlite"
    with pytest.raises(ResultsDBError, match="no results database"):
        ResultsDB(str(path), create=False)
    assert not path.exists()
