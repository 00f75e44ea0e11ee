"""The MAXA readout head (the MAXA paper, Eq. 1-3 and App. A.6): frozen last-layer features with a fixed
positional encoding, projected to ``D``; fixed positional queries, one per 8 x 8 output block; two
cross-attention layers, the first with a learned per-head Gaussian distance bias; a small upsampling CNN.

Where the paper is silent (docs/evaluation.md): distances in units of the output query grid's cells (features and
queries laid on the same [0, 1]^2 square), the second layer's queries are the first layer's outputs, each layer
is residual with a LayerNorm, and the upsampler's two transposed convolutions are x4 then x2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def grid_centres(h: int, w: int) -> torch.Tensor:
    """``(h * w, 2)`` cell centres ``(y, x)`` of an ``h x w`` grid on the unit square, row-major."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def sincos_encoding(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos encoding ``(N, dim)`` of unit-square coordinates ``(N, 2)``: ``dim / 4`` frequencies per
    axis (``dim`` a multiple of 4), no parameters."""
    if dim % 4:
        raise ValueError(f"positional encoding size must be a multiple of 4, got {dim}")
    freqs = (2.0 ** torch.arange(dim // 4, dtype=torch.float32)) * math.pi
    ang = coords[:, :, None] * freqs  # (N, 2, dim/4)
    return torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(coords.shape[0], dim)


class CrossAttention(nn.Module):
    """Multi-head cross-attention of queries ``(B, Q, Dq)`` over keys/values ``(B, N, D)``; with ``bias``, the
    Gaussian ``M_ij = exp(-d_ij^2 / (2 sigma^2)) / (sigma sqrt(2 pi))`` of each head's learned ``sigma`` is added to
    the logits (Eq. 3; ``d`` in query-grid cells)."""

    def __init__(self, query_dim: int, dim: int, heads: int, bias: bool, sigma_init: float = 1.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"adapter width {dim} is not a multiple of {heads} heads")
        self.heads, self.dim = heads, dim
        self.q, self.k, self.v = nn.Linear(query_dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.log_sigma = nn.Parameter(torch.full((heads,), math.log(sigma_init))) if bias else None

    def distance_bias(self, dist2: torch.Tensor) -> torch.Tensor:
        """``(heads, Q, N)`` Gaussian bias from squared distances ``(Q, N)``."""
        sigma = self.log_sigma.exp()[:, None, None]
        return torch.exp(-dist2[None] / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))

    def forward(self, queries: torch.Tensor, feats: torch.Tensor, dist2: torch.Tensor | None = None) -> torch.Tensor:
        b, nq, _ = queries.shape
        hd = self.dim // self.heads
        q = self.q(queries).view(b, nq, self.heads, hd).transpose(1, 2)
        k = self.k(feats).view(b, -1, self.heads, hd).transpose(1, 2)
        v = self.v(feats).view(b, -1, self.heads, hd).transpose(1, 2)
        mask = self.distance_bias(dist2)[None] if self.log_sigma is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, nq, self.dim)


class Upsampler(nn.Module):
    """App. A.6's CNN: conv3x3-ReLU-convT(x4)-ReLU-conv3x3-ReLU-convT(x2)-ReLU-conv1x1, plus a skip path of x8
    bilinear upsampling and a 1x1 convolution; ``(B, D, h, w) -> (B, out, 8h, 8w)``."""

    def __init__(self, dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden, 4, stride=4),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden, 2, stride=2),
            nn.ReLU(),
            nn.Conv2d(hidden, out_dim, 1),
        )
        self.skip = nn.Conv2d(dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False)
        return self.main(x) + self.skip(up)


class MAXA(nn.Module):
    """Frozen features ``(B, H*W, D')`` on an ``feat_grid`` -> dense output ``(B, out_dim, 8 h_q, 8 w_q)`` for the
    query grid ``query_grid``. ``dim`` 32 and 8 heads, 16-dimensional queries (the paper's defaults)."""

    def __init__(self, in_dim, out_dim, feat_grid, query_grid, dim=32, heads=8, query_pe=16, feat_pe=16, hidden=None):
        super().__init__()
        self.feat_grid, self.query_grid = tuple(feat_grid), tuple(query_grid)
        fc, qc = grid_centres(*self.feat_grid), grid_centres(*self.query_grid)
        self.register_buffer("feat_pe", sincos_encoding(fc, feat_pe), persistent=False)
        self.register_buffer("queries", sincos_encoding(qc, query_pe), persistent=False)
        scale = torch.tensor(self.query_grid, dtype=torch.float32)  # distances in query-grid cells
        self.register_buffer("dist2", torch.cdist(qc * scale, fc * scale) ** 2, persistent=False)
        self.proj = nn.Linear(in_dim + feat_pe, dim)
        self.attn1 = CrossAttention(query_pe, dim, heads, bias=True)
        self.attn2 = CrossAttention(dim, dim, heads, bias=False)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.up = Upsampler(dim, hidden or max(dim // 4, out_dim), out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b = feats.shape[0]
        f = self.proj(torch.cat([feats, self.feat_pe.expand(b, -1, -1)], dim=-1))
        q = self.norm1(self.attn1(self.queries.expand(b, -1, -1), f, self.dist2))
        q = self.norm2(q + self.attn2(q, f))
        hq, wq = self.query_grid
        return self.up(q.transpose(1, 2).reshape(b, -1, hq, wq))
