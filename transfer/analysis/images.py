"""Image and label loading shared by the analysis tools (Pillow + torch only)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(root: str, max_images: int | None = None) -> list[str]:
    """Image files under ``root`` (recursive, sorted); at most ``max_images``. Errors if there are none."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    files = []
    for dirpath, _, names in os.walk(root):
        files += [os.path.join(dirpath, n) for n in names if n.lower().endswith(IMAGE_EXTS)]
    files.sort()
    if max_images is not None:
        files = files[: max(0, int(max_images))]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
    return files


def _hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def load_image(path: str, size) -> torch.Tensor:
    """RGB image resized (bicubic) to ``size`` (int or ``(h, w)``) as a float tensor ``(3, h, w)`` in [0, 1]."""
    h, w = _hw(size)
    with Image.open(path) as im:
        im = im.convert("RGB").resize((w, h), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_label(path: str, size) -> torch.Tensor:
    """Single-channel label map resized with nearest-neighbour to ``size`` as an int64 tensor ``(h, w)``."""
    h, w = _hw(size)
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: expected a single-channel label image, got mode {im.mode}")
        im = im.resize((w, h), Image.NEAREST)
        arr = np.asarray(im).astype(np.int64)
    return torch.from_numpy(arr.copy())
