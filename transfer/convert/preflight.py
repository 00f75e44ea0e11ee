"""Checks of a conversion request that run before the conversion itself (docs/usage.md, "Reliability"):
the destination can be written, the grid is within bounds, and the parity check's forward fits in memory.

Each raises :class:`~transfer.convert.canonical.ConversionError` with a one-line message, so that
``tools/convert_ckpt.py`` exits 2 before it loads (destination, grid) or converts (memory) anything.
"""

from __future__ import annotations

import os
import tempfile

from .canonical import ConversionError

#: Largest patch grid accepted, in position tokens (128 x 128 = a 2048 px image at patch 16; ViTDet uses 64 x 64).
MAX_GRID_TOKENS = 128 * 128

_FP32 = 4


def check_destination(dst: str) -> None:
    """Refuse a ``dst`` that is a directory, or whose folder (the nearest existing one, if it is still to be made)
    is not a directory or cannot be written: probed by creating and removing a temporary file there."""
    if os.path.isdir(dst):
        raise ConversionError(f"--dst {dst} is a directory; give a file name, e.g. {os.path.join(dst, 'out.pth')}")
    folder = os.path.dirname(os.path.abspath(dst))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConversionError(f"--dst {dst}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
    except OSError as e:
        raise ConversionError(f"--dst {dst}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def check_grid(grid) -> tuple[int, int]:
    """``(gh, gw)`` as ints; refuses non-positive sizes and grids over :data:`MAX_GRID_TOKENS` tokens."""
    gh, gw = (int(g) for g in grid)
    if gh < 1 or gw < 1:
        raise ConversionError(f"--grid must be positive, got {gh} {gw}")
    if gh * gw > MAX_GRID_TOKENS:
        raise ConversionError(
            f"--grid {gh} {gw} is {gh * gw:,} position tokens; the converter accepts at most {MAX_GRID_TOKENS:,} "
            "(e.g. 128 128)"
        )
    return gh, gw


def parity_bytes(num_tokens: int, embed_dim: int, num_heads: int, num_params: int, batch: int = 1) -> int:
    """Peak bytes of the parity check (fp32): the source and the target model's weights, and one block's forward,
    bounded by explicit attention (scores and their softmax, as detectron2's ViT computes them, and a third
    ``heads x T^2`` as margin for the allocator and the reference's attention) plus ``12 x T x D`` activations
    (input, q/k/v, MLP hidden, output) for ``T`` tokens. Measured: ViT-S/16 at 64 x 64 adds 1.21 GB of peak
    memory to a conversion, estimated 1.46 GB (docs/usage.md, "Reliability")."""
    t = int(num_tokens)
    per_block = 3 * num_heads * t * t + 12 * t * embed_dim
    return _FP32 * (2 * int(num_params) + batch * per_block)


def available_bytes() -> float | None:
    """Memory available now: ``MemAvailable`` from ``/proc/meminfo``, lowered to the cgroup's remaining limit
    (``memory.max - memory.current``, cgroup v2) when there is one; ``None`` when unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(float(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = float(f.read().strip())
        if limit != "max":
            found.append(float(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_parity_memory(grid, extra_tokens: int, embed_dim: int, num_heads: int, num_params: int) -> None:
    """Refuse a grid whose parity forward (:func:`parity_bytes`) needs more than :func:`available_bytes`."""
    gh, gw = grid
    tokens = gh * gw + extra_tokens
    need = parity_bytes(tokens, embed_dim, num_heads, num_params)
    have = available_bytes()
    if have is not None and need > have:
        raise ConversionError(
            f"--grid {gh} {gw}: the parity check needs about {need / 2**30:.1f} GiB ({tokens:,} tokens, "
            f"{num_heads} heads, width {embed_dim}) but {have / 2**30:.1f} GiB are available; use a smaller grid "
            "or --no-check"
        )
