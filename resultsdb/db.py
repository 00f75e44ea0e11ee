"""The sqlite file: schema, version check, atomic and concurrency-safe writes, reads (docs/evaluation.md).

The schema version lives in ``PRAGMA user_version``. A file that is not an sqlite database, or holds another
schema version, raises :class:`ResultsDBError` with a one-line message and is never written to. Writes are one
``BEGIN IMMEDIATE`` transaction each, in WAL mode with a busy timeout, retried on ``database is locked``, so
several processes writing at once lose nothing.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time

SCHEMA_VERSION = 1
ENV_VAR = "SSLVIT_RESULTS_DB"
DEFAULT_PATH = os.path.join("outputs", "results.sqlite")
DISABLED = ("", "none", "off", "0")
SQLITE_MAGIC = b"SQLite format 3\x00"

COLUMNS = (
    "time",
    "checkpoint",
    "checkpoint_sha256",
    "method",
    "variant",
    "protocol",
    "config_hash",
    "config",
    "seed",
    "metrics",
    "code_version",
    "machine",
    "output_dir",
)
SCHEMA = (
    """CREATE TABLE records (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, checkpoint TEXT, checkpoint_sha256 TEXT,
        method TEXT, variant TEXT NOT NULL, protocol TEXT NOT NULL, config_hash TEXT, config TEXT, seed INTEGER,
        metrics TEXT NOT NULL, code_version TEXT, machine TEXT, output_dir TEXT)""",
    "CREATE INDEX records_protocol ON records (protocol, method)",
    """CREATE TABLE file_hashes (
        path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, method TEXT)""",
)
JSON_COLUMNS = ("config", "metrics", "machine")


class ResultsDBError(RuntimeError):
    """The database file cannot be used as it is (not sqlite, another schema version, unwritable)."""


def default_db_path(path: str | None = None) -> str | None:
    """``path`` if given, else ``$SSLVIT_RESULTS_DB``, else ``outputs/results.sqlite``; ``None`` when the value is
    one of ``none``, ``off``, ``0`` or empty (recording disabled)."""
    value = path if path is not None else os.environ.get(ENV_VAR, DEFAULT_PATH)
    return None if value.strip().lower() in DISABLED else value


def _check_header(path: str) -> None:
    """An existing non-empty file must start with the sqlite magic bytes."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as fh:
            if fh.read(16) != SQLITE_MAGIC:
                raise ResultsDBError(f"{path}: not an sqlite database (corrupt or another file); left untouched")


def _retry(fn, attempts: int = 20):
    """``fn()``, retried with jittered backoff while sqlite says the database is locked or busy."""
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or i == attempts - 1:
                raise
            time.sleep(min(1.0, 0.02 * 2**i) * (0.5 + random.random()))
    return None


class ResultsDB:
    """One results file. ``create=False`` (readers): a missing file is an error instead of a new database."""

    def __init__(self, path: str, create: bool = True, timeout: float = 30.0):
        self.path = path
        _check_header(path)
        if not create and not os.path.exists(path):
            raise ResultsDBError(f"{path}: no results database (run an evaluation first, or pass --db)")
        if create and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            self.conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            _retry(self._check_or_create)
            _retry(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))  # after the check: it rewrites the header
        except sqlite3.DatabaseError as e:
            self.close()
            if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
                raise
            raise ResultsDBError(f"{path}: unusable results database ({e}); left untouched") from None

    def _version(self) -> tuple[int, int]:
        """``(user_version, number of schema objects)`` from one snapshot (a read transaction unless one is open:
        another process may create the schema between two separate reads)."""
        own = not self.conn.in_transaction
        if own:
            self.conn.execute("BEGIN DEFERRED")
        try:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            return version, self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            if own:
                self.conn.execute("COMMIT")

    def _refuse(self, version: int) -> None:
        what = "no toolkit schema" if version == 0 else f"schema version {version}"
        raise ResultsDBError(
            f"{self.path}: {what}, this code reads and writes version {SCHEMA_VERSION}; "
            "left untouched (use another --db or $SSLVIT_RESULTS_DB)"
        )

    def _check_or_create(self) -> None:
        """Check the schema version (reading only); create the schema in an empty file, in one transaction."""
        version, objects = self._version()
        if version == SCHEMA_VERSION:
            return
        if objects:
            self._refuse(version)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            version, objects = self._version()  # another process may have created it meanwhile
            if not objects:
                for stmt in SCHEMA:
                    self.conn.execute(stmt)
                self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                self._refuse(version)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _transaction(self, statements) -> int:
        """Run ``[(sql, params), ...]`` in one ``BEGIN IMMEDIATE`` transaction; returns the last row id."""

        def run():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                last = None
                for sql, params in statements:
                    last = self.conn.execute(sql, params).lastrowid
                self.conn.execute("COMMIT")
                return last
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

        return _retry(run)

    def insert(self, record: dict) -> int:
        """Write one record (keys of :data:`COLUMNS`; JSON columns as Python objects); returns its id."""
        unknown = set(record) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown record fields {sorted(unknown)}")
        row = {k: record.get(k) for k in COLUMNS}
        for k in JSON_COLUMNS:
            row[k] = None if row[k] is None else json.dumps(row[k], allow_nan=True)  # metrics keep their order
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        return self._transaction([(f"INSERT INTO records ({cols}) VALUES ({marks})", [row[k] for k in COLUMNS])])

    def cached_hash(self, path: str, mtime_ns: int, size: int) -> tuple[str, str | None] | None:
        """``(sha256, method)`` cached for ``path`` at this mtime and size, or ``None``."""
        row = _retry(
            lambda: self.conn.execute(
                "SELECT sha256, method FROM file_hashes WHERE path=? AND mtime_ns=? AND size=?", (path, mtime_ns, size)
            ).fetchone()
        )
        return (row["sha256"], row["method"]) if row else None

    def cache_hash(self, path: str, mtime_ns: int, size: int, sha256: str, method: str | None) -> None:
        sql = "INSERT OR REPLACE INTO file_hashes (path, mtime_ns, size, sha256, method) VALUES (?, ?, ?, ?, ?)"
        self._transaction([(sql, (path, mtime_ns, size, sha256, method))])

    def records(self, protocol: str | None = None, method: str | None = None) -> list[dict]:
        """All records (oldest first), optionally of one protocol and/or method; JSON columns decoded."""
        where, params = [], []
        for col, val in (("protocol", protocol), ("method", method)):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        sql = "SELECT * FROM records" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        rows = _retry(lambda: self.conn.execute(sql, params).fetchall())
        out = []
        for r in rows:
            d = dict(r)
            for k in JSON_COLUMNS:
                d[k] = json.loads(d[k]) if d[k] is not None else None
            out.append(d)
        return out
