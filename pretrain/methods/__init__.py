"""Pretraining methods, one module each; ``method`` in the config chooses one (docs/architecture.md).

- ``intertwined``: self-distillation with the crop-tied position field and masked position prediction
  (docs/method.md); DINOv2-dagger is this method with the field and position masking switched off.
- ``droppos``: DropPos, an MAE-style encoder that classifies the positions of patches whose position embedding was
  dropped (docs/droppos.md).
"""

from __future__ import annotations

from .base import PretrainingMethod
from .droppos import DropPos
from .intertwined import IntertwinedDistillation

METHODS: dict[str, type[PretrainingMethod]] = {"intertwined": IntertwinedDistillation, "droppos": DropPos}


def method_class(name: str) -> type[PretrainingMethod]:
    """The class registered under ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


def build_method(cfg) -> PretrainingMethod:
    """The method ``cfg.method`` built from ``cfg``."""
    return method_class(cfg.method)(cfg)


__all__ = ["METHODS", "PretrainingMethod", "DropPos", "IntertwinedDistillation", "build_method", "method_class"]
