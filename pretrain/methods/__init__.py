"""Pretraining methods, one module each; ``method`` in the config chooses one (docs/architecture.md).

- ``intertwined``: self-distillation with the crop-tied position field and masked position prediction
  (docs/method.md); DINOv2-dagger is this method with the field and position masking switched off.
"""

from __future__ import annotations

from .base import PretrainingMethod
from .intertwined import IntertwinedDistillation

METHODS: dict[str, type[PretrainingMethod]] = {"intertwined": IntertwinedDistillation}


def method_class(name: str) -> type[PretrainingMethod]:
    """The class registered under ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


def build_method(cfg) -> PretrainingMethod:
    """The method ``cfg.method`` built from ``cfg``."""
    return method_class(cfg.method)(cfg)


__all__ = ["METHODS", "PretrainingMethod", "IntertwinedDistillation", "build_method", "method_class"]
