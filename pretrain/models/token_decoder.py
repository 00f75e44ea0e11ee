"""A light transformer decoder over a token sequence: ``Linear(in_dim, dim)``, ``depth`` timm ``Block`` s (MLP ratio
4, qkv bias, LayerNorm), a final LayerNorm and ``Linear(dim, out_dim)``. It adds no position embedding: the tokens
carry what they need. DropPos's position classifier (docs/droppos.md) and CR2PQ's patch decoder (docs/cr2pq.md)
are this module; their initialisation is their method's."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn


class TokenDecoder(nn.Module):
    """``(B, L, in_dim) -> (B, L, out_dim)``: ``embed``, ``blocks``, ``norm``, ``pred`` (module docstring)."""

    def __init__(self, in_dim: int, out_dim: int, dim: int, depth: int, heads: int, norm_eps: float = 1e-6):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.embed = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))
