"""Checkpoint conversion (docs/protocols.md §1): readers per source format -> canonical ViT -> writers per target,
with a numeric parity check before anything is written. Entry points: ``tools/convert_ckpt.py`` (CLI) and
:func:`convert_checkpoint` (Python)."""

from .canonical import ConversionError
from .cli import convert_checkpoint

__all__ = ["ConversionError", "convert_checkpoint"]
