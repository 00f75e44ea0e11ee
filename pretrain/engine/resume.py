"""What a resumed run checks before it goes on (docs/usage.md, "Resuming"): the newest readable checkpoint, and
that the config is the one the checkpoint was trained with.

- Checkpoints are tried newest first; one that cannot be read (truncated, not a checkpoint) is skipped with a
  warning naming the file and the reason, and the next older one is used.
- The checkpoint's config is compared with the new one, key by key. Keys in :data:`MAY_CHANGE` (logging,
  checkpointing, workers, where to stop early) may differ; any other difference stops the run with the keys and
  both values, unless the key is listed in ``train.resume_may_change``.
"""

from __future__ import annotations

import logging
import os

import torch

from .checkpoint import list_checkpoints

logger = logging.getLogger("pretrain")

#: Keys that may differ between a checkpoint's config and the run that resumes it.
MAY_CHANGE = frozenset(
    {
        "train.output_dir",
        "crops.photometric_on",  # the same distribution of crops either way (docs/fidelity.md)
        "crops.reduced_decode",
        "crops.resize_backend",
        "train.num_workers",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.max_iterations",
        "train.max_nonfinite",
        "train.resume_may_change",
    }
)


class ResumeError(RuntimeError):
    """The run cannot resume from its output folder as configured."""


def read_newest_checkpoint(output_dir: str, map_location="cpu") -> tuple[str, dict] | None:
    """``(path, state)`` of the newest checkpoint in ``output_dir`` that loads, or None when there is none.
    Unreadable ones are skipped with a warning; if every checkpoint is unreadable, :class:`ResumeError`."""
    paths = list_checkpoints(output_dir)
    for path in reversed(paths):
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
            if not isinstance(state, dict) or not {"iteration", "model", "optimizer", "rng"} <= set(state):
                raise ValueError("not a training checkpoint of this toolkit")
            return path, state
        except Exception as error:  # noqa: BLE001 - any failure to read means "try the older one"
            logger.warning("skipping unreadable checkpoint %s (%s: %s)", path, type(error).__name__, error)
    if paths:
        raise ResumeError(f"none of the {len(paths)} checkpoints in {os.path.dirname(paths[0])} can be read")
    return None


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` of a nested config dict."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict, new: dict) -> list[tuple[str, object, object]]:
    """``(key, saved value, new value)`` of every key present in both configs whose values differ."""
    old, cur = flatten(saved), flatten(new)
    return [(k, old[k], cur[k]) for k in sorted(old.keys() & cur.keys()) if old[k] != cur[k]]


def check_resume_config(saved: dict, new: dict, checkpoint: str) -> list[tuple[str, object, object]]:
    """The allowed changes between ``saved`` (the checkpoint's config) and ``new``; :class:`ResumeError` naming
    every other one."""
    allowed = MAY_CHANGE | set(new.get("train", {}).get("resume_may_change") or [])
    changes = config_changes(saved, new)
    refused = [(k, a, b) for k, a, b in changes if k not in allowed]
    if refused:
        listing = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in refused)
        keys = ",".join(k for k, _, _ in refused)
        raise ResumeError(
            f"the config differs from the one {checkpoint} was trained with: {listing}. Resume with the original "
            f"values, choose another train.output_dir, or accept the change with train.resume_may_change=[{keys}]"
        )
    return [c for c in changes if c[0] != "train.resume_may_change"]
