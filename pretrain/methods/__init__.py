"""Pretraining methods, one module each; ``method`` in the config chooses one (docs/architecture.md).

- ``intertwined``: self-distillation with the crop-tied position field and masked position prediction
  (docs/method.md); DINOv2-dagger is this method with the field and position masking switched off.
- ``droppos``: DropPos, an MAE-style encoder that classifies the positions of patches whose position embedding was
  dropped (docs/droppos.md).
- ``cr2pq``: CR2PQ, a RoPE encoder on one view whose rotated positional queries predict a frozen teacher's patch
  embeddings of another view at continuous relative coordinates (docs/cr2pq.md).
"""

from __future__ import annotations

from .base import PretrainingMethod
from .cr2pq import CR2PQ
from .droppos import DropPos
from .intertwined import IntertwinedDistillation

METHODS: dict[str, type[PretrainingMethod]] = {
    "intertwined": IntertwinedDistillation,
    "droppos": DropPos,
    "cr2pq": CR2PQ,
}


def method_class(name: str) -> type[PretrainingMethod]:
    """The class registered under ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


def build_method(cfg) -> PretrainingMethod:
    """The method ``cfg.method`` built from ``cfg``."""
    return method_class(cfg.method)(cfg)


__all__ = [
    "METHODS",
    "PretrainingMethod",
    "CR2PQ",
    "DropPos",
    "IntertwinedDistillation",
    "build_method",
    "method_class",
]
