"""Checkpoint conversion (docs/protocols.md §1): readers per source format -> canonical ViT -> writers per target,
with a numeric parity check before anything is written. Entry points: :func:`convert_checkpoint` (Python,
:mod:`.api`) and ``tools/convert_ckpt.py`` (its command line, :mod:`.cli`); :mod:`.metadata` reads the
architecture of a converted file back for the transfer protocols."""

from .api import convert_checkpoint
from .canonical import ConversionError

__all__ = ["ConversionError", "convert_checkpoint"]
