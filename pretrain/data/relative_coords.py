"""CR2PQ's relative coordinate system between two crops of one image (docs/cr2pq.md, CR2PQ Eq. 4 and Listing 1).

The top-left corner of view A is the origin and one patch of A is the unit, so A's ``K_A^H x K_A^W`` patches sit at
the integer grid ``(m, n)``, and every patch of view B gets continuous coordinates in that frame, whatever the two
crops do to each other (overlap, containment or no intersection at all). For B's patch ``(m, n)`` (0-based)::

    row = (top_B - top_A) / (h_A / K_A^H) + m * (h_B / K_B^H) / (h_A / K_A^H)
    col = (left_B - left_A) / (w_A / K_A^W) + n * (w_B / K_B^W) / (w_A / K_A^W)

i.e. ``bias + index * scale`` per axis (Listing 1 with its printed tuple-unpacking bug fixed: the grid runs from
``start = bias`` to ``end = bias + K_B * scale`` in steps of ``scale``). Boxes may be in pixels or in normalised
image coordinates: only ratios enter.

Two additions, both reducing to the formula above when neither view is flipped and ``anchor="corner"``:

- **flips**: a horizontally flipped view is displayed mirrored, so A's column axis runs from its crop's right edge
  and B's patch ``n`` covers the mirrored stretch of B's crop; the coordinate of a B patch is taken from the stretch
  of the image it covers, mapped into A's displayed frame;
- **anchor**: ``"corner"`` (Listing 1) places a patch at the corner of its stretch that comes first in A's frame;
  ``"center"`` places it at the centre of its stretch minus one half, so that A's own patches stay at integers and a
  B patch whose stretch is centred on A's patch ``(m, n)`` gets exactly ``(m, n)`` (the corner rule is off by
  ``(scale - 1) / 2`` there).
"""

from __future__ import annotations

import torch

ANCHORS = ("corner", "center")

__all__ = ["ANCHORS", "listing1_coords", "relative_coords"]


def listing1_coords(p_a, p_b, k_a: int, k_b: int) -> torch.Tensor:
    """CR2PQ's Listing 1 with the printed bug fixed, for square grids: ``p_a``, ``p_b`` = ``(top, left, height,
    width)``; returns ``(K_B * K_B, 2)`` float64 ``[row, col]``, row-major over B's grid."""
    h_bias = (p_b[0] - p_a[0]) / (p_a[2] / k_a)
    h_scale = (p_b[2] / k_b) / (p_a[2] / k_a)
    w_bias = (p_b[1] - p_a[1]) / (p_a[3] / k_a)
    w_scale = (p_b[3] / k_b) / (p_a[3] / k_a)
    # arange(start=bias, end=bias + K_B * scale, step=scale), written so that rounding cannot add a K_B+1-th point
    steps = torch.arange(k_b, dtype=torch.float64)
    rows, cols = h_bias + steps * h_scale, w_bias + steps * w_scale
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([grid_r.reshape(-1), grid_c.reshape(-1)], dim=-1)


def _axis(a0, a1, b0, b1, k_a: int, k_b: int, flip_a, flip_b, anchor: str) -> torch.Tensor:
    """Coordinates ``(B, k_b)`` along one axis of B's ``k_b`` patches in A's displayed frame (module docstring);
    ``a0, a1, b0, b1`` ``(B,)`` crop edges, ``flip_a``/``flip_b`` ``(B,)`` bool (mirror this axis)."""
    unit = (a1 - a0) / k_a  # one patch of A, in image units
    j = torch.arange(k_b, dtype=a0.dtype, device=a0.device)
    step = ((b1 - b0) / k_b)[:, None]
    # the stretch of the image under B's displayed patch j
    lo = torch.where(flip_b[:, None], b1[:, None] - (j + 1) * step, b0[:, None] + j * step)
    hi = lo + step

    def to_a(x):  # image position -> A's displayed frame, in patches of A
        return torch.where(flip_a[:, None], (a1[:, None] - x) / unit[:, None], (x - a0[:, None]) / unit[:, None])

    u, v = to_a(lo), to_a(hi)
    if anchor == "corner":
        return torch.minimum(u, v)
    if anchor == "center":
        return (u + v) / 2 - 0.5
    raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")


def relative_coords(
    box_a: torch.Tensor,
    box_b: torch.Tensor,
    grid_a: tuple[int, int],
    grid_b: tuple[int, int],
    flip_a: torch.Tensor | None = None,
    flip_b: torch.Tensor | None = None,
    anchor: str = "corner",
) -> torch.Tensor:
    """``(B, K_B^H * K_B^W, 2)`` ``[row, col]`` coordinates of view B's patches (row-major over ``grid_b``) in view
    A's frame (module docstring). ``box_a``, ``box_b``: ``(B, 4)`` crops ``(x0, y0, x1, y1)`` before flipping, in
    one image's coordinates (pixels or normalised); ``grid_a`` / ``grid_b``: ``(rows, cols)`` of A's patch grid and
    of B's target grid; ``flip_a`` / ``flip_b``: ``(B,)`` bool horizontal flips (None = none)."""
    box_a, box_b = box_a.double(), box_b.double()
    no_flip = torch.zeros(box_a.shape[0], dtype=torch.bool, device=box_a.device)
    flip_a = no_flip if flip_a is None else flip_a.bool()
    flip_b = no_flip if flip_b is None else flip_b.bool()
    (ha, wa), (hb, wb) = grid_a, grid_b
    rows = _axis(box_a[:, 1], box_a[:, 3], box_b[:, 1], box_b[:, 3], ha, hb, no_flip, no_flip, anchor)
    cols = _axis(box_a[:, 0], box_a[:, 2], box_b[:, 0], box_b[:, 2], wa, wb, flip_a, flip_b, anchor)
    r = rows[:, :, None].expand(-1, hb, wb)
    c = cols[:, None, :].expand(-1, hb, wb)
    return torch.stack([r, c], dim=-1).reshape(box_a.shape[0], hb * wb, 2).float()
