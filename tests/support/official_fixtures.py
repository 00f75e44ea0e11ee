"""Reference fixtures made once from the official model code (``tools/make_reference_fixtures.py``): a small
random-weight model in an official checkpoint layout, the images it was run on and the official model's outputs.

One ``.pt`` file per source model under ``tests/fixtures/official/``, tensors and plain values only (loadable with
``torch.load(weights_only=True)``)::

    {
        "checkpoint": {key: tensor},      # the state dict exactly as the official code saves it
        "config": {...},                  # how the official model was built (str / int / float / bool / list)
        "hf_config": {...} | None,        # Hugging Face config.json contents (transformers layouts only)
        "images": {"HxW": (1, 3, H, W)},  # inputs, already normalised, int8 on a 1/IMAGE_SCALE lattice
        "tokens": {"HxW": (1, N, D)},     # the official model's final-normed patch tokens for each input
        "generator": {...},               # code versions the outputs came from
    }
"""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "official"
IMAGE_SCALE = 32.0  # stored image = round(input * IMAGE_SCALE) as int8: inputs are exact multiples of 1/32


def fixture_path(name: str) -> Path:
    return FIXTURE_DIR / f"{name}.pt"


def save_fixture(name: str, fixture: dict) -> Path:
    """Write one fixture (tensors made contiguous and detached, float32) and return its path."""

    def clean(v):
        if isinstance(v, torch.Tensor):
            v = v.detach().contiguous().clone()
            return v.float() if v.is_floating_point() else v
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    path = fixture_path(name)
    torch.save(clean(fixture), path)
    return path


def load_fixture(name: str) -> dict:
    """One fixture with its images as float32 inputs again."""
    fx = torch.load(fixture_path(name), map_location="cpu", weights_only=True)
    fx["images"] = {k: v.float() / IMAGE_SCALE if not v.is_floating_point() else v for k, v in fx["images"].items()}
    return fx


def size_key(h: int, w: int) -> str:
    return f"{h}x{w}"


def parse_size(key: str) -> tuple[int, int]:
    h, w = key.split("x")
    return int(h), int(w)
