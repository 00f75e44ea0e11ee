"""A learnable position field tied to the crop (docs/method.md §1).

The field ``P`` is a ``(d, h_p, w_p)`` tensor whose outer edges are the edges of the *virtual image*
(normalised coordinates ``[0, 1]^2``). A crop with box ``(x0, y0, x1, y1)`` resized to a ``gh x gw`` patch grid
gets, for patch ``(r, c)``, the field sampled bilinearly at the patch centre
``x = x0 + (c + 0.5) / gw * (x1 - x0)``, ``y = y0 + (r + 0.5) / gh * (y1 - y0)``. A horizontally flipped crop
reverses the x order so that each embedding stays attached to the pixels it came from.

Sampling uses ``grid_sample(align_corners=False, padding_mode="border")``: with ``align_corners=False`` the
normalised coordinate -1 is the *outer edge* of the first field cell, so ``u in [0, 1]`` maps to ``2u - 1``
and the field covers exactly the virtual image; points past the border (local crops with
``enclose: global``) read the border value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def patch_centres(boxes: torch.Tensor, flips: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
    """Virtual-image coordinates of the patch centres of each crop.

    Args:
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in virtual-image coordinates.
        flips: ``(B,)`` bool, crop was horizontally flipped (or None).
        grid: ``(gh, gw)`` patch grid of the resized crop.

    Returns:
        ``(B, gh, gw, 2)`` tensor of ``(x, y)`` in ``[0, 1]`` (may leave it for crops past the border).
    """
    gh, gw = grid
    boxes = boxes.to(torch.float32)
    fx = (torch.arange(gw, device=boxes.device, dtype=torch.float32) + 0.5) / gw  # (gw,)
    fy = (torch.arange(gh, device=boxes.device, dtype=torch.float32) + 0.5) / gh  # (gh,)
    x0, y0, x1, y1 = boxes.unbind(-1)
    if flips is not None:
        fx_b = torch.where(flips.to(boxes.device).bool()[:, None], 1.0 - fx[None, :], fx[None, :])  # (B, gw)
    else:
        fx_b = fx[None, :].expand(boxes.shape[0], gw)
    xs = x0[:, None] + fx_b * (x1 - x0)[:, None]  # (B, gw)
    ys = y0[:, None] + fy[None, :] * (y1 - y0)[:, None]  # (B, gh)
    return torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding of an ``h x w`` grid, ``(dim, h, w)``: half the channels encode y, half x."""
    if dim % 4 != 0:
        raise ValueError(f"sincos init needs embed_dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    out_y = ys[:, None] * omega[None, :]  # (h, q)
    out_x = xs[:, None] * omega[None, :]  # (w, q)
    emb_y = torch.cat([out_y.sin(), out_y.cos()], dim=1)[:, None, :].expand(h, w, 2 * quarter)
    emb_x = torch.cat([out_x.sin(), out_x.cos()], dim=1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([emb_y, emb_x], dim=-1).permute(2, 0, 1).float().contiguous()


def mae_sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine table of an ``h x w`` grid, ``(h*w, dim)`` in row-major patch order (the table
    MAE and DropPos use as their frozen ``pos_embed``): the first half of the channels encodes the column, the
    second half the row, each half ``[sin(p * omega), cos(p * omega)]`` at integer positions ``p = 0, 1, ...`` with
    ``omega_k = 10000 ** (-k / (dim / 4))``, computed in float64. :func:`sincos_2d` is another layout (row first,
    half-cell offsets) for initialising the position field."""
    if dim % 4 != 0:
        raise ValueError(f"a 2-D sin-cos table needs embed_dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        out = pos[:, None] * omega[None, :]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return torch.cat([one_axis(cols.reshape(-1)), one_axis(rows.reshape(-1))], dim=1).float()


class PositionField(nn.Module):
    """Learnable ``(d, h, w)`` field sampled at each crop's patch centres.

    Args:
        dim: embedding dimension ``d``.
        size: ``(h_p, w_p)`` field resolution (paper: 50 x 50).
        init: ``"trunc_normal"`` (std 0.02) or ``"sincos"`` (fixed-init 2-D sin-cos, still learnable).
    """

    def __init__(self, dim: int, size: tuple[int, int] = (50, 50), init: str = "trunc_normal"):
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if h < 2 or w < 2:
            raise ValueError(f"position field must be at least 2x2, got {h}x{w}")
        self.dim, self.size = dim, (int(h), int(w))
        self.field = nn.Parameter(torch.zeros(1, dim, h, w))
        if init == "trunc_normal":
            nn.init.trunc_normal_(self.field, std=0.02)
        elif init == "sincos":
            with torch.no_grad():
                self.field.copy_(sincos_2d(dim, h, w)[None])
        else:
            raise ValueError(f"pos_field.init must be 'trunc_normal' or 'sincos', got {init!r}")

    def forward(self, boxes: torch.Tensor, flips: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
        """Sample the field for a batch of crops: ``(B, gh*gw, d)``."""
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (B, 4), got {tuple(boxes.shape)}")
        centres = patch_centres(boxes, flips, grid)  # (B, gh, gw, 2) in [0, 1]
        b, gh, gw, _ = centres.shape
        # All crops in one grid_sample call on the single field: stack crops along the grid's height axis.
        g = (centres * 2.0 - 1.0).reshape(1, b * gh, gw, 2).to(self.field.dtype)
        out = F.grid_sample(self.field, g, mode="bilinear", padding_mode="border", align_corners=False)
        return out.reshape(self.dim, b, gh * gw).permute(1, 2, 0)

    def materialise(self, grid: tuple[int, int]) -> torch.Tensor:
        """The field sampled over the whole virtual image on a ``grid`` of patches: ``(gh*gw, d)``."""
        full = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=self.field.device)
        return self.forward(full, None, grid)[0]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"


#: Resampling rules of a learned ``pos_embed`` grid (docs/fidelity.md, field-off positions; docs/protocols.md for
#: which source checkpoint follows which): name -> (scale-factor offset or None for "by output size", antialias).
POS_INTERPOLATION_RULES = {
    "size": (None, False),  # MAE, Hugging Face Dinov2Model / ViTMAEModel, detectron2's get_abs_pos
    "dinov2": (0.1, False),  # DINOv2 without registers: scale factor (n + 0.1) / M
    "size_antialias": (None, True),  # DINOv2 with registers (offset 0, antialias), timm's resample_abs_pos_embed
}
POS_INTERPOLATIONS = tuple(POS_INTERPOLATION_RULES)


def resize_pos_grid(grid: torch.Tensor, size: tuple[int, int], rule: str = "size") -> torch.Tensor:
    """Resample a ``(1, d, h, w)`` position grid to ``size`` in one bicubic step (``align_corners=False``) under
    ``rule`` (:data:`POS_INTERPOLATION_RULES`). The field-off model and the converters use the same function.

    ``"size"`` interpolates to the output size. ``"dinov2"`` is DINOv2's code: the scale factor ``(n + 0.1) / M``
    per axis, which PyTorch also uses to place the source samples, so the values differ slightly from ``size``
    (same output shape). ``"size_antialias"`` is by size with ``antialias=True``, which in PyTorch is a different
    bicubic kernel (a = -0.5 instead of -0.75) even when upsampling. A grid already at ``size`` is returned
    unchanged under every rule (the sources' own models skip the resize there too).
    """
    if rule not in POS_INTERPOLATION_RULES:
        raise ValueError(f"pos_embed interpolation must be one of {POS_INTERPOLATIONS}, got {rule!r}")
    if tuple(grid.shape[2:]) == tuple(size):
        return grid
    offset, antialias = POS_INTERPOLATION_RULES[rule]
    how = {"size": tuple(size)}
    if offset is not None:
        how = {"scale_factor": tuple((float(n) + offset) / m for n, m in zip(size, grid.shape[2:]))}
    out = F.interpolate(grid.float(), mode="bicubic", align_corners=False, antialias=antialias, **how)
    if tuple(out.shape[2:]) != tuple(size):
        raise ValueError(f"{rule} resampling of a {tuple(grid.shape[2:])} grid gave {tuple(out.shape[2:])}, not {size}")
    return out.to(grid.dtype)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1, rule: str = "size"
) -> torch.Tensor:
    """Resample a ``(1, num_prefix + n*n, d)`` learned grid embedding to ``grid`` (bicubic, :func:`resize_pos_grid`).

    Returns the patch part only, ``(1, gh*gw, d)``; prefix (CLS) slots are the caller's business.
    """
    patch = pos_embed[:, num_prefix:]
    n = patch.shape[1]
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"pos_embed patch part must be a square grid, got {n} positions")
    if (side, side) == tuple(grid):
        return patch
    d = patch.shape[-1]
    patch = resize_pos_grid(patch.reshape(1, side, side, d).permute(0, 3, 1, 2), grid, rule)
    return patch.permute(0, 2, 3, 1).reshape(1, -1, d)
