"""``record_result``: the one call every tool makes where a final number is produced. It never raises."""

from __future__ import annotations

import datetime
import logging
import os
import sys

from .db import ResultsDB, ResultsDBError, default_db_path
from .provenance import code_version, config_hash, file_identity, flatten_metrics, machine

logger = logging.getLogger(__name__)


def build_record(checkpoint, protocol, metrics, config=None, seed=None, random_init=False, output_dir=None, db=None):
    """The row :meth:`ResultsDB.insert` writes (module doc of :mod:`resultsdb.db`); ``db`` caches the file hash."""
    flat = flatten_metrics(metrics)
    if not flat:
        raise ValueError(f"{protocol}: no numeric metrics to record")
    digest = method = None
    if checkpoint and os.path.isfile(checkpoint):
        digest, method = file_identity(checkpoint, db)
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "checkpoint_sha256": digest,
        "method": method,
        "variant": "random-init" if random_init else "trained",
        "protocol": protocol,
        "config_hash": config_hash(config),
        "config": config,
        "seed": None if seed is None else int(seed),
        "metrics": flat,
        "code_version": code_version(),
        "machine": machine(),
        "output_dir": os.path.abspath(output_dir) if output_dir else None,
    }


def record_result(
    checkpoint: str | None,
    protocol: str,
    metrics: dict,
    config: dict | None = None,
    seed: int | None = None,
    random_init: bool = False,
    output_dir: str | None = None,
    db: str | None = None,
) -> int | None:
    """Write one record to the results database (``db``, else ``$SSLVIT_RESULTS_DB``, else
    ``outputs/results.sqlite``; ``none``/``off`` disables it) and return its id. ``metrics``: numbers, nested dicts
    allowed (flattened to ``a/b``); ``config``: the protocol's settings (hashed and kept); ``seed`` tells repeats
    apart. Any failure is logged as one warning line and returns ``None``: the run's own files are already
    written and stay as they are."""
    path = default_db_path(db)
    if path is None:
        return None
    try:
        with ResultsDB(path) as store:
            row = build_record(checkpoint, protocol, metrics, config, seed, random_init, output_dir, store)
            return store.insert(row)
    except Exception as e:  # never lose or fail a finished run over its database record
        msg = f"results database: {protocol} not recorded ({e if isinstance(e, ResultsDBError) else repr(e)})"
        logger.warning(msg)
        if not logging.getLogger().handlers:
            print(f"warning: {msg}", file=sys.stderr)
        return None
