"""Where a number came from: the checkpoint's content hash and method, the code version, the machine, a config hash."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_method(path: str) -> str | None:
    """``meta["method"]`` of a ``torch.save``-d checkpoint (our ``backbone.pth``), else ``None`` (other formats,
    pickles that need full unpickling, unreadable files)."""
    if not path.endswith((".pth", ".pt")):
        return None
    try:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable or foreign file: no method to report
        return None
    meta = obj.get("meta") if isinstance(obj, dict) else None
    method = meta.get("method") if isinstance(meta, dict) else None
    return str(method) if method else None


def file_identity(path: str, db=None) -> tuple[str, str | None]:
    """``(sha256, method)`` of ``path``, looked up in ``db``'s cache by absolute path, mtime and size first."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if db is not None:
        hit = db.cached_hash(*key)
        if hit:
            return hit
    digest, method = sha256_file(path), checkpoint_method(path)
    if db is not None:
        db.cache_hash(*key, digest, method)
    return digest, method


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty`` of the repository this package lives in, else the package version."""
    try:
        out = subprocess.run(
            ["git", "-C", REPO, "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return "git:" + out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return "ssl-vit-toolkit " + version("ssl-vit-toolkit")
    except Exception:  # not installed: no version to report
        return "unknown"


def machine() -> dict:
    """Hostname, platform, Python, torch version and the device (CUDA name or ``cpu``)."""
    info = {"hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        info["torch"] = torch.__version__
        cuda = torch.cuda.is_available()
        info["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
        info["cpu_threads"] = torch.get_num_threads()
    return info


def config_hash(config) -> str | None:
    """First 16 hex digits of the sha256 of ``config`` as sorted JSON (``None`` for no config)."""
    if config is None:
        return None
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten_metrics(metrics: dict, prefix: str = "") -> dict:
    """Nested dicts to ``a/b`` keys; numbers as floats (NaN kept), booleans and None dropped, the rest skipped."""
    out = {}
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_metrics(v, name + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
    return out
