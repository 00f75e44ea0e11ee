"""Atomic checkpoint files for MMEngine runs (docs/usage.md, "Reliability").

MMEngine's ``CheckpointHook`` hands ``Runner.save_checkpoint`` its ``backend_args``; ``save_checkpoint`` serialises
the checkpoint into memory and calls the file backend's ``put(bytes, path)``. The local backend opens ``path``
itself and writes into it, so a kill during the write leaves a partial ``iter_N.pth`` under its final name.
:class:`AtomicLocalBackend` is the local backend with ``put`` through :func:`pretrain.io.atomic_write_bytes`
(temporary file beside ``path``, fsync, ``os.replace``): ``path`` is either the whole new file or absent.
:func:`use_atomic_checkpoints` selects it in a config's checkpoint hook; the Segmenter entry
(``transfer.segmenter.train``) calls it for every run.

MMEngine also writes the small ``last_checkpoint`` text file (the path of the newest checkpoint) in place, with a
plain ``open(..., "w")`` inside its hook. :func:`repair_last_checkpoint` runs before a resume: a ``last_checkpoint``
that does not name an existing file (cut by a kill, emptied) is rewritten atomically to the newest complete
``iter_N.pth`` / ``epoch_N.pth`` in the work dir, or removed when there is none.
"""

from __future__ import annotations

import glob
import os
import re

from mmengine.fileio import LocalBackend, register_backend

from pretrain.io import atomic_write_bytes

#: The name under which :class:`AtomicLocalBackend` is registered in MMEngine's file backends.
BACKEND = "atomic_local"


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend whose ``put`` never leaves a partial file under the final name."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, filepath)


register_backend(BACKEND, AtomicLocalBackend, force=True)


def use_atomic_checkpoints(cfg) -> bool:
    """Make ``default_hooks.checkpoint`` write through :class:`AtomicLocalBackend` unless it names a backend of its
    own (e.g. a remote store). Returns whether it now writes atomically."""
    hook = (cfg.get("default_hooks") or {}).get("checkpoint")
    if not hook:
        return False
    args = dict(hook.get("backend_args") or {})
    if args.get("backend", BACKEND) != BACKEND:
        return False
    args["backend"] = BACKEND
    hook["backend_args"] = args
    return True


def remove_stale_temporaries(work_dir: str) -> list[str]:
    """Remove the ``.tmp-*.pth`` files an interrupted checkpoint write left in ``work_dir``; returns their paths."""
    stale = sorted(glob.glob(os.path.join(work_dir, ".tmp-*.pth")))
    for path in stale:
        os.unlink(path)
    return stale


_NUMBERED = re.compile(r"^(iter|epoch)_(\d+)\.pth$")


def newest_checkpoint(work_dir: str) -> str | None:
    """The ``iter_N.pth`` (else ``epoch_N.pth``) with the largest ``N`` in ``work_dir``, or None."""
    found = []
    for name in os.listdir(work_dir):
        m = _NUMBERED.match(name)
        if m:
            found.append((m.group(1) == "iter", int(m.group(2)), name))
    return os.path.join(work_dir, max(found)[2]) if found else None


def repair_last_checkpoint(work_dir: str) -> str | None:
    """Make ``work_dir/last_checkpoint`` name an existing checkpoint (see the module docstring). Returns a message
    saying what was repaired, or None when nothing needed it."""
    path = os.path.join(work_dir, "last_checkpoint")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        named = f.read().strip()
    if named and os.path.isfile(named):
        return None
    newest = newest_checkpoint(work_dir)
    if newest is None:
        os.unlink(path)
        return f"removed {path}: it named {named!r}, which does not exist, and no checkpoint is left"
    atomic_write_bytes(newest.encode("utf-8"), path)
    return f"rewrote {path}: it named {named!r}, which does not exist; now {newest}"
