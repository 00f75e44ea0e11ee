"""Deterministic file writing for the toy sets: fixed JPEG/PNG encoder settings, canonical JSON, output folders."""

from __future__ import annotations

import fnmatch
import json
import os

import numpy as np
from PIL import Image

_JPEG_KW = dict(format="JPEG", quality=92, subsampling=0, optimize=False, progressive=False)
_PNG_KW = dict(format="PNG", optimize=False, compress_level=6)


def json_dump(obj: object, path: str) -> None:
    """Write JSON deterministically (sorted keys, fixed separators, ASCII, trailing newline)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(text + "\n")


def save_rgb_jpeg(img: np.ndarray, path: str) -> None:
    """Save a ``(H, W, 3)`` uint8 image as a baseline JPEG with fixed encoder parameters."""
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), mode="RGB").save(path, **_JPEG_KW)


def save_label_png(label: np.ndarray, path: str) -> None:
    """Save a ``(H, W)`` uint8 label map as an 8-bit single-channel PNG with fixed encoder parameters."""
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="L").save(path, **_PNG_KW)


def prepare_dir(path: str, patterns: list[str], overwrite: bool) -> None:
    """Create ``path``; with files of ours (``patterns``, glob-style) already there, remove them or refuse."""
    os.makedirs(path, exist_ok=True)
    ours = sorted(n for n in os.listdir(path) if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if ours and not overwrite:
        raise FileExistsError(
            f"{path} already holds {len(ours)} generated file(s) (e.g. {ours[0]}); pass overwrite=True "
            "(CLI: --overwrite) to replace them, or use ensure_toy_data() for an idempotent, atomic set"
        )
    for name in ours:
        os.remove(os.path.join(path, name))
