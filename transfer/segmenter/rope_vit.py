"""MMSeg ``VisionTransformer`` with continuous 2-D RoPE instead of an absolute ``pos_embed`` (docs/positions.md).

:class:`RoPEVisionTransformer` (registered in MMSeg's ``MODELS`` on import) holds exactly MMSeg's parameters
except ``pos_embed`` (absent: RoPE is the position), so the converter's MMSeg target keys load into it unchanged.
Every layer's attention rotates the queries and keys of the patch tokens by the input's own patch grid
(``rope_coords``: ``grid`` = integer ``[row, col]``, the rule of our RoPE ViT at any input size), with the
frequencies of :func:`pretrain.models.rope.rope_frequencies`; the CLS token stays unrotated. The attention is
``scaled_dot_product_attention`` on the ``in_proj`` / ``out_proj`` weights of MMCV's ``MultiheadAttention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from torch import nn

from pretrain.models.rope import coords_for_grid, rope_angles, rope_frequencies, rope_sdpa


def rope_layer_forward(layer: nn.Module, x: torch.Tensor, angles: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """MMSeg ``TransformerEncoderLayer.forward`` with RoPE in its attention: ``x (B, N, C)`` -> ``(B, N, C)``."""
    mha = layer.attn
    torch_mha = mha.attn
    b, n, c = x.shape
    heads = torch_mha.num_heads
    h = layer.norm1(x)
    qkv = F.linear(h, torch_mha.in_proj_weight, torch_mha.in_proj_bias)
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    drop = torch_mha.dropout if layer.training else 0.0
    out = rope_sdpa(q, k, v, angles, num_prefix, dropout_p=drop)
    out = torch_mha.out_proj(out.transpose(1, 2).reshape(b, n, c))
    x = x + mha.dropout_layer(mha.proj_drop(out))
    return layer.ffn(layer.norm2(x), identity=x)


class RoPEVisionTransformer(VisionTransformer):
    """MMSeg's ``VisionTransformer`` (same arguments) with 2-D RoPE: ``rope_base``, ``rope_rule``, ``rope_coords``
    as recorded by the converter's meta (``meta["rope"]``)."""

    def __init__(
        self,
        *args,
        rope_base: float = 10000.0,
        rope_rule: str = "axial",
        rope_coords: str = "grid",
        num_register_tokens: int = 0,
        **kw,
    ):
        super().__init__(*args, **kw)
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        d = self.cls_token.shape[-1]
        # register (DINOv3 storage) tokens after the CLS token, unrotated like it
        self.reg_token = nn.Parameter(torch.zeros(1, num_register_tokens, d)) if num_register_tokens else None
        if self.reg_token is not None:
            nn.init.trunc_normal_(self.reg_token, std=0.02)
        if getattr(self, "out_origin", False):
            raise ValueError("RoPEVisionTransformer does not support out_origin=True")
        self.pos_embed = None  # registered as None: not in the state dict
        head_dim = self.cls_token.shape[-1] // self.layers[0].attn.attn.num_heads
        self.register_buffer("rope_freqs", rope_frequencies(head_dim, rope_base, rope_rule), persistent=False)
        self.rope_coords = rope_coords

    def init_weights(self):
        """MMSeg's init; the random init's ``trunc_normal_(pos_embed)`` gets a throw-away tensor."""
        pretrained = isinstance(self.init_cfg, dict) and self.init_cfg.get("type") in ("Pretrained", "Pretrained_Part")
        if pretrained:
            return super().init_weights()
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, 1))
        try:
            super().init_weights()
        finally:
            self.pos_embed = None

    @property
    def num_prefix_tokens(self) -> int:
        """CLS (when kept) and register tokens before the patch tokens."""
        return int(self.with_cls_token) + (0 if self.reg_token is None else self.reg_token.shape[1])

    def _feature(self, x: torch.Tensor, hw: tuple[int, int]):
        out = x[:, self.num_prefix_tokens :]
        out = out.reshape(x.shape[0], hw[0], hw[1], x.shape[-1]).permute(0, 3, 1, 2).contiguous()
        return [out, x[:, 0]] if self.output_cls_token else out

    def forward(self, inputs: torch.Tensor):
        b = inputs.shape[0]
        x, hw = self.patch_embed(inputs)
        prefix = [self.cls_token.expand(b, -1, -1)] if self.with_cls_token else []
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(b, -1, -1))
        x = self.drop_after_pos(torch.cat(prefix + [x], dim=1))
        if self.pre_norm:
            x = self.pre_ln(x)
        coords = coords_for_grid(hw[0], hw[1], self.rope_coords, x.device)[None]
        angles = rope_angles(coords, self.rope_freqs)
        outs = []
        for i, layer in enumerate(self.layers):
            x = rope_layer_forward(layer, x, angles, self.num_prefix_tokens)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                outs.append(self._feature(x, hw))
        return tuple(outs)


MODELS.register_module(module=RoPEVisionTransformer, force=True)
