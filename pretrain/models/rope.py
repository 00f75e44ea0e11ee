"""Continuous 2-D axial rotary position embedding (RoPE) for ViT attention (docs/positions.md).

A head of ``D`` channels is read as ``D/2`` complex numbers, channel ``2t`` the real and ``2t+1`` the imaginary
part (RoFormer, Su et al.; CR2PQ Eqs. 5-6). The first ``D/4`` complex pairs rotate by the *row* coordinate, the
last ``D/4`` by the *column* coordinate, both with the same frequencies ``theta_0 .. theta_{D/4-1}``:

    angle[..., t]         = row * theta_t          (t < D/4)
    angle[..., D/4 + t]   = col * theta_t

Coordinates are floats in patch units, so a crop's patches may sit at fractional positions (CR2PQ's continuous
RoPE). Because ``q_n . k_m`` after rotation depends only on ``coords_n - coords_m``, shifting every coordinate of a
view by one constant leaves its attention unchanged.

Frequency rules (:data:`ROPE_RULES`, the ``rule`` argument of :func:`rope_frequencies`):

- ``"axial"`` (default): ``theta_t = base ** (-t / (D/4))``: each axis is an ordinary 1-D RoPE over its ``D/2``
  channels (``base ** (-2t / (D/2))``), the standard axial 2-D RoPE.
- ``"cr2pq_printed"``: ``theta_t = base ** (-t / (D/2))`` for ``t < D/4``, the formula as printed in CR2PQ §3.2
  (its index ranges are inconsistent; see docs/positions.md).
- ``"dinov3"``: ``theta_t = 2 pi / base ** (2t / (D/2))`` (DINOv3's periods, usually with ``base = 100``); DINOv3
  also normalises coordinates to ``[-1, 1]`` per axis, see :func:`normalized_grid_coords`.
"""

from __future__ import annotations

import math

import torch

#: Frequency rules understood by :func:`rope_frequencies`.
ROPE_RULES = ("axial", "cr2pq_printed", "dinov3")


def rope_frequencies(head_dim: int, base: float = 10000.0, rule: str = "axial") -> torch.Tensor:
    """Angular frequencies per axis, ``(head_dim // 4,)`` float32, under ``rule`` (module docstring)."""
    if head_dim % 4 != 0:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    if base <= 0:
        raise ValueError(f"RoPE base must be positive, got {base}")
    quarter = head_dim // 4
    t = torch.arange(quarter, dtype=torch.float64)
    if rule == "axial":
        freqs = base ** (-t / quarter)
    elif rule == "cr2pq_printed":
        freqs = base ** (-t / (head_dim / 2))
    elif rule == "dinov3":
        freqs = 2 * math.pi / base ** (2 * t / (head_dim / 2))
    else:
        raise ValueError(f"RoPE rule must be one of {ROPE_RULES}, got {rule!r}")
    return freqs.float()


def rope_angles(coords: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotation angles ``(..., N, 2F)`` of points ``coords (..., N, 2)`` = ``[row, col]`` for ``freqs (F,)``:
    the first ``F`` angles are ``row * freqs``, the last ``F`` are ``col * freqs``."""
    if coords.shape[-1] != 2:
        raise ValueError(f"coords must end in [row, col], got shape {tuple(coords.shape)}")
    coords = coords.to(torch.float32)
    freqs = freqs.to(device=coords.device, dtype=torch.float32)
    row = coords[..., 0:1] * freqs
    col = coords[..., 1:2] * freqs
    return torch.cat([row, col], dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2t, 2t+1)`` of ``x (B, heads, N, D)`` as complex numbers by ``angles`` (broadcastable
    to ``(B, 1, N, D/2)``); computed in float32, returned in ``x``'s dtype and shape."""
    d = x.shape[-1]
    if d % 2 != 0 or angles.shape[-1] != d // 2:
        raise ValueError(f"angles must have {d // 2} entries for head dim {d}, got {angles.shape[-1]}")
    pairs = x.float().reshape(*x.shape[:-1], d // 2, 2)
    re, im = pairs.unbind(-1)
    cos, sin = angles.float().cos(), angles.float().sin()
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.reshape(x.shape).to(x.dtype)


def apply_rope_after_prefix(x: torch.Tensor, angles: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """:func:`apply_rope` on the tokens after the first ``num_prefix`` (CLS, registers), which stay unrotated."""
    if num_prefix == 0:
        return apply_rope(x, angles)
    return torch.cat([x[:, :, :num_prefix], apply_rope(x[:, :, num_prefix:], angles)], dim=2)


def grid_coords(h: int, w: int, device=None) -> torch.Tensor:
    """The integer patch grid ``(h*w, 2)`` = ``[row, col]`` as float32, row-major (patch order of the ViT)."""
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)


def normalized_grid_coords(h: int, w: int, device=None) -> torch.Tensor:
    """DINOv3's coordinates of an ``h x w`` grid, ``(h*w, 2)``: patch centres ``(i + 0.5) / size`` mapped to
    ``[-1, 1]`` per axis (``2 c - 1``), row-major."""
    g = grid_coords(h, w, device)
    size = torch.tensor([h, w], dtype=torch.float32, device=device)
    return 2.0 * (g + 0.5) / size - 1.0


#: Coordinate conventions: how an ``h x w`` input grid is turned into RoPE coordinates.
ROPE_COORDS = ("grid", "normalized")


def coords_for_grid(h: int, w: int, convention: str = "grid", device=None) -> torch.Tensor:
    """Coordinates of an ``h x w`` input grid under ``convention`` (:data:`ROPE_COORDS`)."""
    if convention == "grid":
        return grid_coords(h, w, device)
    if convention == "normalized":
        return normalized_grid_coords(h, w, device)
    raise ValueError(f"RoPE coordinate convention must be one of {ROPE_COORDS}, got {convention!r}")


def rope_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    angles: torch.Tensor,
    num_prefix: int = 0,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` of ``(B, heads, N, D)`` queries, keys and values after rotating ``q`` and
    ``k`` of the patch tokens (the ones after ``num_prefix``) by ``angles`` (``(B or 1, N - num_prefix, D/2)``)."""
    import torch.nn.functional as F

    a = angles[:, None] if angles.dim() == 3 else angles
    q = apply_rope_after_prefix(q, a, num_prefix)
    k = apply_rope_after_prefix(k, a, num_prefix)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


def masked_angles(angles: torch.Tensor, pos_mask: torch.Tensor | None) -> torch.Tensor:
    """``angles (B or 1, N, D/2)`` with the patches of ``pos_mask (B, N)`` set to 0: position-masked patches stay
    unrotated, like the prefix tokens (docs/positions.md, [POSMASK] under RoPE)."""
    if pos_mask is None:
        return angles
    return torch.where(pos_mask[..., None], torch.zeros((), dtype=angles.dtype, device=angles.device), angles)
