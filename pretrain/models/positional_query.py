"""CR2PQ's heads (docs/cr2pq.md): the position-aware cross-attention, the patch decoder and the global projector.

:class:`PositionalQueryAttention` is CR2PQ Eq. 8. The query of view B's patch ``(m, n)`` is the learnable mask
placeholder ``h_mask`` through ``W_Q``, rotated by the continuous relative coordinates of that patch in view A's
frame (:mod:`pretrain.data.relative_coords`); the keys ``h_A W_K`` of view A's patch tokens are rotated by A's
integer grid, and the values are ``h_A W_V``. Since a rotated ``q . k`` depends only on the difference of the two
coordinates (:mod:`pretrain.models.rope`), a query attends to A's patches by where they lie relative to it. The
heads are then joined by ``W_O``. None of these modules is exported: the paper does not use them downstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope, rope_angles, rope_frequencies
from .token_decoder import TokenDecoder

__all__ = ["GlobalProjector", "PatchDecoder", "PositionalQueryAttention"]


class PositionalQueryAttention(nn.Module):
    """``(h_A (B, N_A, d), coords_A (B or 1, N_A, 2), coords_B (B, N_B, 2)) -> (B, N_B, d)`` (module docstring)."""

    def __init__(self, dim: int, num_heads: int, rope_base: float = 10000.0, rope_rule: str = "axial"):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 4:
            raise ValueError(f"width {dim} over {num_heads} heads must give a head dimension divisible by 4")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("freqs", rope_frequencies(self.head_dim, rope_base, rope_rule), persistent=False)
        # at the scale of the final-normed tokens whose keys it meets (std 1); a std-0.02 token through std-0.02
        # weights would start with near-zero queries and uniform attention (docs/cr2pq.md)
        nn.init.normal_(self.mask_token, std=1.0)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def rotated(self, h_a: torch.Tensor, coords_a: torch.Tensor, coords_b: torch.Tensor):
        """The rotated queries ``(B, heads, N_B, hd)``, rotated keys ``(B, heads, N_A, hd)`` and values."""
        b, n_b = coords_b.shape[:2]
        q = self._heads(self.q(self.mask_token.to(h_a.dtype)).expand(b, n_b, -1))
        q = apply_rope(q, rope_angles(coords_b, self.freqs)[:, None])
        k = apply_rope(self._heads(self.k(h_a)), rope_angles(coords_a, self.freqs)[:, None])
        return q, k, self._heads(self.v(h_a))

    def forward(self, h_a: torch.Tensor, coords_a: torch.Tensor, coords_b: torch.Tensor) -> torch.Tensor:
        q, k, v = self.rotated(h_a, coords_a, coords_b)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1))


class PatchDecoder(TokenDecoder):
    """The light decoder ``g`` (:class:`TokenDecoder`; no positions: they are in the tokens through the
    cross-attention), from the cross-attention's width to the teacher's, with CR2PQ's defaults."""

    def __init__(self, in_dim: int, out_dim: int, dim: int = 384, depth: int = 2, heads: int = 6, norm_eps=1e-6):
        super().__init__(in_dim, out_dim, dim, depth, heads, norm_eps)


class GlobalProjector(nn.Sequential):
    """``g'``: two linear layers with a GELU between them (CR2PQ Eq. 10, "two linear layers and an activation")."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


@torch.no_grad()
def init_linears(module: nn.Module) -> None:
    """Every Linear of ``module`` truncated-normal(0.02) with zero bias, as the ViT's blocks."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
