"""Crop-tied continuous coordinates and the continuous 2-D sin-cos embedding (docs/positions.md).

The crop-tied coordinates of a patch are the virtual-image coordinates of its centre (the points at which the
position field is sampled, :func:`~.position_field.patch_centres`: the crop's box, i.e. its scale and translation
inside the virtual image, and its flip) in units of an ``extent = (rows, cols)`` grid spanning the virtual image,
with cell centres at the integers::

    row = y * extent_rows - 0.5,    col = x * extent_cols - 0.5      (x, y in [0, 1])

so a crop covering the whole virtual image at a ``rows x cols`` patch grid gets exactly the integer grid, and a
flipped crop's columns run backwards. :func:`continuous_sincos_2d` evaluates MAE's fixed 2-D sin-cos at such
(fractional) coordinates; at the integer grid it equals :func:`~.position_field.mae_sincos_2d`.
"""

from __future__ import annotations

import torch

from .position_field import patch_centres


def crop_patch_coords(
    boxes: torch.Tensor, flips: torch.Tensor | None, grid: tuple[int, int], extent: tuple[int, int] | list
) -> torch.Tensor:
    """Crop-tied coordinates ``(B, gh*gw, 2)`` = ``[row, col]`` (row-major patches) of crops at ``boxes`` (``(B, 4)``
    ``(x0, y0, x1, y1)`` in virtual-image coordinates) with ``flips`` (``(B,)`` bool or None)."""
    rows, cols = (float(e) for e in extent)
    centres = patch_centres(boxes, flips, grid)  # (B, gh, gw, 2) as (x, y)
    row = centres[..., 1] * rows - 0.5
    col = centres[..., 0] * cols - 0.5
    return torch.stack([row, col], dim=-1).reshape(centres.shape[0], -1, 2)


def full_image_coords(grid: tuple[int, int], extent, device=None) -> torch.Tensor:
    """Crop-tied coordinates ``(1, gh*gw, 2)`` of an unflipped crop covering the whole virtual image."""
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device)
    return crop_patch_coords(box, None, grid, extent)


def continuous_sincos_2d(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """MAE's 2-D sin-cos at ``coords (..., N, 2)`` = ``[row, col]``: ``(..., N, dim)`` float32, the first half of the
    channels ``[sin(col w), cos(col w)]``, the second half the same of the row, ``w_k = 10000 ** (-k / (dim/4))``
    (computed in float64, as :func:`~.position_field.mae_sincos_2d`)."""
    if dim % 4 != 0:
        raise ValueError(f"a 2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=coords.device) / quarter)
    c = coords.to(torch.float64)

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        out = pos[..., None] * omega
        return torch.cat([out.sin(), out.cos()], dim=-1)

    return torch.cat([one_axis(c[..., 1]), one_axis(c[..., 0])], dim=-1).float()
