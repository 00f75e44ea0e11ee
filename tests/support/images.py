"""Small generated images, boxes and samples for the data-pipeline tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pretrain.seeding import mix_seeds

PINNED_MIX = 7405809139744024400  # mix_seeds(1, 2, 3)


def noise_image(width, height, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def ramp_image(width=256, height=160):
    """Pixel value = column index (0..255) in every channel."""
    row = np.arange(width, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (height, 1))[..., None], 3, axis=2), "RGB")


def random_boxes(n, rng):
    x0 = rng.uniform(0.0, 0.8, n)
    y0 = rng.uniform(0.0, 0.8, n)
    w = rng.uniform(0.05, 1.0, n) * (1.0 - x0)
    h = rng.uniform(0.05, 1.0, n) * (1.0 - y0)
    return torch.tensor(np.stack([x0, y0, x0 + w, y0 + h], axis=1), dtype=torch.float64)


def enclosing_box(boxes):
    return boxes[:, 0].min().item(), boxes[:, 1].min().item(), boxes[:, 2].max().item(), boxes[:, 3].max().item()


def fake_samples(batch, n_global=2, n_local=3, seed0=0, gsize=8, lsize=4):
    samples = []
    for b in range(batch):
        samples.append(
            {
                "global_crops": [torch.full((3, gsize, gsize), 100.0 * b + c) for c in range(n_global)],
                "local_crops": [torch.full((3, lsize, lsize), 100.0 * b + 50 + c) for c in range(n_local)],
                "global_boxes": torch.rand(n_global, 4),
                "local_boxes": torch.rand(n_local, 4),
                "global_flips": torch.rand(n_global) < 0.5,
                "local_flips": torch.rand(n_local) < 0.5,
                "index": 10 + b,
                "seed": mix_seeds(seed0, b),
            }
        )
    return samples
