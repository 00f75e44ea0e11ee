"""Training checkpoints (docs/method.md §6): model (student + teacher), optimiser, iteration, RNG states, config.

Files are ``<output_dir>/checkpoints/ckpt_<iteration:08d>.pth``, written atomically; the newest ``keep`` are kept.
Everything saved loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import glob
import os
import random
import re

import torch

from ..io import atomic_torch_save

_PATTERN = re.compile(r"ckpt_(\d{8})\.pth$")


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[str]:
    files = [f for f in glob.glob(os.path.join(checkpoint_dir(output_dir), "ckpt_*.pth")) if _PATTERN.search(f)]
    return sorted(files, key=lambda f: int(_PATTERN.search(f).group(1)))


def latest_checkpoint(output_dir: str) -> str | None:
    files = list_checkpoints(output_dir)
    return files[-1] if files else None


def remove_stale_temporaries(output_dir: str) -> list[str]:
    """Delete the temporary files an interrupted checkpoint write left in ``output_dir/checkpoints``; returns them."""
    stale = sorted(glob.glob(os.path.join(checkpoint_dir(output_dir), ".tmp-*.pth")))
    for path in stale:
        os.unlink(path)
    return stale


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": _python_state_to_list(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_list(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(state):
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def save_checkpoint(output_dir: str, iteration: int, model, optimizer, config: dict, extra=None, keep: int = 2) -> str:
    path = os.path.join(checkpoint_dir(output_dir), f"ckpt_{iteration:08d}.pth")
    state = {
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
    }
    atomic_torch_save(state, path)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        os.unlink(old)
    return path
