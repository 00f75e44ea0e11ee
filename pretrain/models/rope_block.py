"""timm's transformer block with optional 2-D RoPE in its attention (docs/positions.md).

:class:`RopeBlock` holds exactly timm's ``Block`` parameters (same names, same initialisation and random-number
use); ``forward(x)`` is timm's, and ``forward(x, angles, num_prefix)`` rotates the queries and keys of the patch
tokens (those after the ``num_prefix`` CLS / register tokens) by ``angles`` before
``scaled_dot_product_attention`` (:func:`~.rope.rope_sdpa`).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Attention, Block

from .rope import rope_sdpa


def rope_attention(attn: Attention, x: torch.Tensor, angles: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """timm ``Attention.forward`` with RoPE on q and k: ``x (B, N, C)`` -> ``(B, N, C)``."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    drop = attn.attn_drop.p if attn.training else 0.0
    out = rope_sdpa(q, k, v, angles, num_prefix, scale=attn.scale, dropout_p=drop)
    out = attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))
    return attn.proj_drop(attn.proj(out))


class RopeBlock(Block):
    """timm ``Block``; with ``angles`` its attention applies RoPE to the patch tokens."""

    def forward(self, x: torch.Tensor, angles: torch.Tensor | None = None, num_prefix: int = 0) -> torch.Tensor:
        if angles is None:
            return super().forward(x)
        x = x + self.drop_path1(self.ls1(rope_attention(self.attn, self.norm1(x), angles, num_prefix)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
