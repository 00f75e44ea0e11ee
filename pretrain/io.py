"""File helpers: atomic writes, so a crash never leaves a partial checkpoint or metrics file behind."""

from __future__ import annotations

import json
import os
import tempfile

import torch

#: The file every transfer run writes its final metrics to (ViTDet, Segmenter), in its output folder.
METRICS_FINAL = "metrics_final.json"


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented, key-sorted JSON to a temporary file beside ``path``, then ``os.replace`` it."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace`` onto ``path``."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` as :func:`atomic_torch_save` writes a checkpoint (temporary beside ``path``, fsync, replace)."""
    _atomic_write(path, lambda f: f.write(data))


def _atomic_write(path: str | os.PathLike, write) -> None:
    """``write(f)`` into ``.tmp-*.pth`` beside ``path``, fsync, ``os.replace``; on failure the temporary is removed
    and an ``OSError`` names ``path`` and the free space."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, (OSError, RuntimeError)):  # torch reports a full disk as "enforce fail ... unexpected pos"
            free = _free_bytes(directory)
            raise OSError(f"writing {path} failed ({error}); {free / 2**30:.2f} GiB free in {directory}") from error
        raise


def _free_bytes(directory: str) -> float:
    try:
        st = os.statvfs(directory)
        return float(st.f_bavail * st.f_frsize)
    except OSError:
        return float("nan")
