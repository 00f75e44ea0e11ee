"""Argument checks shared by the toy-set makers and :class:`toydata.spec.ToySpec`; each error names the argument."""

from __future__ import annotations

import numpy as np


def check_seed(seed: int, name: str = "seed") -> int:
    """``seed`` as an ``int``; a bool, a non-integer or a negative value raises ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_size(size: int | tuple[int, int], name: str, minimum: int = 32) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair; the toy scenes need at least ``minimum`` pixels per side."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {size!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"{name} must be at least {minimum}x{minimum} pixels, got {h}x{w}")
    return h, w


def check_count(n: int, name: str, minimum: int = 0) -> int:
    """``n`` as an ``int``; a bool, a non-integer or a value below ``minimum`` raises ``ValueError``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)
