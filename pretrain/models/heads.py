"""DINO-style projection heads (DINO on CLS, iBOT on content-masked patches, position on position-masked patches).

MLP (``nlayers`` linear layers with GELU) -> bottleneck -> L2 normalisation -> weight-normalised prototypes.
The weight normalisation is applied with its gain fixed to 1 (as DINO/DINOv2 freeze ``weight_g`` at 1):
the effective prototype matrix is ``last_layer.weight`` with unit-norm rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    def __init__(
        self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3
    ):
        super().__init__()
        if nlayers < 1:
            raise ValueError("head nlayers must be >= 1")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        # x @ (W / |W|_rows)^T == (x @ W^T) / |W|_rows: dividing the (tokens, K) output is exact and, with
        # K = 65,536 prototypes of width 256, cheaper than normalising the (K, 256) matrix (and its backward)
        w = self.last_layer.weight
        return F.linear(x, w) / w.norm(dim=1).clamp_min(eps)
