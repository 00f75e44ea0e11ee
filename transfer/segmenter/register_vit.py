"""MMSeg ``VisionTransformer`` that keeps register tokens in the sequence (DINOv2-reg, timm ``reg_tokens``).

:class:`RegisterVisionTransformer` (registered in MMSeg's ``MODELS`` on import) holds MMSeg's parameters plus
``reg_token`` ``(1, R, D)``; the converter's MMSeg target writes it for a source with registers unless
``--drop-registers`` (docs/protocols.md §1). The sequence is ``[CLS + its position, registers, patches + their
positions]`` as in DINOv2: registers get no position embedding. The layers are MMSeg's own; only the token
preparation and the removal of the prefix tokens from the output differ from MMSeg's ``forward``.
"""

from __future__ import annotations

import torch
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from torch import nn


class RegisterVisionTransformer(VisionTransformer):
    """MMSeg's ``VisionTransformer`` (same arguments) with ``num_register_tokens`` registers after the CLS token."""

    def __init__(self, *args, num_register_tokens: int = 0, **kw):
        super().__init__(*args, **kw)
        if getattr(self, "out_origin", False):
            raise ValueError("RegisterVisionTransformer does not support out_origin=True")
        if not self.with_cls_token:
            raise ValueError("RegisterVisionTransformer needs with_cls_token=True (registers follow the CLS token)")
        if num_register_tokens < 1:
            raise ValueError(f"num_register_tokens must be >= 1, got {num_register_tokens}")
        self.reg_token = nn.Parameter(torch.zeros(1, num_register_tokens, self.cls_token.shape[-1]))
        nn.init.trunc_normal_(self.reg_token, std=0.02)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.reg_token.shape[1]

    def forward(self, inputs: torch.Tensor):
        b = inputs.shape[0]
        x, hw = self.patch_embed(inputs)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = self._pos_embeding(x, hw, self.pos_embed)  # MMSeg's own: positions of CLS and patches
        x = torch.cat([x[:, :1], self.reg_token.expand(b, -1, -1), x[:, 1:]], dim=1)
        if self.pre_norm:
            x = self.pre_ln(x)
        outs, n = [], self.num_prefix_tokens
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                out = x[:, n:].reshape(b, hw[0], hw[1], x.shape[-1]).permute(0, 3, 1, 2).contiguous()
                outs.append([out, x[:, 0]] if self.output_cls_token else out)
        return tuple(outs)


MODELS.register_module(module=RegisterVisionTransformer, force=True)
