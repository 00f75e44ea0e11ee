"""Atomic checkpoint files for MMEngine runs (docs/usage.md, "Reliability").

MMEngine's ``CheckpointHook`` hands ``Runner.save_checkpoint`` its ``backend_args``; ``save_checkpoint`` serialises
the checkpoint into memory and calls the file backend's ``put(bytes, path)``. The local backend opens ``path``
itself and writes into it, so a kill during the write leaves a partial ``iter_N.pth`` under its final name.
:class:`AtomicLocalBackend` is the local backend with ``put`` through :func:`pretrain.io.atomic_write_bytes`
(temporary file beside ``path``, fsync, ``os.replace``): ``path`` is either the whole new file or absent.
:func:`use_atomic_checkpoints` selects it in a config's checkpoint hook; the Segmenter entry
(``transfer.segmenter.train``) calls it for every run.
"""

from __future__ import annotations

import glob
import os

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
