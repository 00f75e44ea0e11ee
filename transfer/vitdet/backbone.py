"""ViTDet backbone for the paper's COCO protocol: plain ViT, global attention through SDPA, no relative position.

:class:`SDPAViT` is detectron2's :class:`~detectron2.modeling.ViT` with three changes:

* **Attention** runs through :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
  kernels on GPU, O(N) memory instead of detectron2's explicit ``N x N`` score matrix). With relative position
  off the result equals detectron2's ``softmax((q * scale) @ k^T) @ v`` (same default scale ``head_dim**-0.5``).
* **Activation checkpointing** is a switch (``use_act_checkpoint``) implemented with
  :func:`torch.utils.checkpoint.checkpoint` (non-reentrant) per block; detectron2's own switch needs fairscale.
  It is active only while training with gradients enabled, so evaluation pays nothing.
* **Extra tokens** (optional): a CLS token (``use_cls_token``, parameter ``cls_token`` of shape ``(1, 1, D)``,
  position embedding ``pos_embed[:, :1]``) and register tokens (``num_register_tokens``, parameter
  ``reg_token`` of shape ``(1, R, D)``, no position embedding) kept in the sequence in DINOv2 order
  ``[CLS, registers, patches]`` through all blocks, and dropped from the output feature map.

Parameter names are unchanged (``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,
norm2,mlp.fc1,mlp.fc2}``), so the converter's explicit ``backbone.net.*`` keys load into it exactly as into
detectron2's ViT; the blocks *are* detectron2's ``Block``/``Attention`` objects (their class is switched to the
sequence-based subclasses below after construction, which adds no state), so initialisation and random-number
consumption are identical to detectron2's ViT for the same seed.

* **2-D RoPE** (optional, ``use_rope=True`` with ``use_abs_pos=False``): the attention rotates q and k of the patch
  tokens by the input's integer patch grid (``rope_coords="grid"``), with the frequencies of
  :func:`pretrain.models.rope.rope_frequencies` (``rope_base``, ``rope_rule``), at any input size; CLS and register
  tokens stay unrotated and get no position (docs/positions.md). No parameter is added.

Window attention and relative position are **not supported** (the paper's protocol uses neither): asking for
``window_size > 0``, a non-empty ``window_block_indexes`` or ``use_rel_pos=True`` raises ``ValueError``. Use
detectron2's ``ViT`` for those. Residual conv blocks (``residual_block_indexes``) are supported; they act on the
patch tokens only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from detectron2.modeling.backbone.utils import get_abs_pos
from detectron2.modeling.backbone.vit import Attention, Block, ViT

from pretrain.models.rope import coords_for_grid, rope_angles, rope_frequencies, rope_sdpa

__all__ = ["SDPAAttention", "SDPABlock", "SDPAViT"]


class SDPAAttention(Attention):
    """detectron2's global multi-head attention computed by ``scaled_dot_product_attention``.

    Operates on token sequences ``(B, N, C)`` (not on ``(B, H, W, C)`` maps) so that extra tokens can take part.
    Holds the same parameters as :class:`detectron2.modeling.backbone.vit.Attention` (``qkv``, ``proj``).
    """

    def forward(self, x: torch.Tensor, angles: torch.Tensor | None = None, num_prefix: int = 0) -> torch.Tensor:
        """Args: x: ``(B, N, C)``; angles: RoPE angles of the patch tokens (after ``num_prefix``) or None.
        Returns ``(B, N, C)``."""
        if self.use_rel_pos:
            raise ValueError("SDPAAttention does not support relative position (use_rel_pos=True)")
        B, N, C = x.shape
        # (3, B, heads, N, head_dim): the same qkv split as detectron2's Attention
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if angles is not None:
            x = rope_sdpa(q, k, v, angles, num_prefix, scale=self.scale)
        else:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        x = x.transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


class SDPABlock(Block):
    """detectron2's ViT block over a token sequence with ``num_prefix`` extra tokens before the patch tokens."""

    def forward(self, x: torch.Tensor, hw: tuple[int, int], num_prefix: int = 0, angles=None) -> torch.Tensor:
        """Args: x: ``(B, num_prefix + H*W, C)``; hw: the patch grid ``(H, W)``; angles: RoPE angles or None.
        Returns the same shape."""
        if self.window_size > 0:
            raise ValueError("SDPABlock does not support window attention (window_size > 0)")
        x = x + self.drop_path(self.attn(self.norm1(x), angles, num_prefix))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.use_residual_block:
            H, W = hw
            B, _, C = x.shape
            prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
            patches = self.residual(patches.reshape(B, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = torch.cat([prefix, patches.reshape(B, H * W, C)], dim=1)
        return x


class SDPAViT(ViT):
    """Plain ViT backbone for ViTDet with SDPA global attention, optional activation checkpointing and tokens.

    Takes detectron2 ``ViT``'s arguments plus:

    Args:
        use_cls_token: keep a learnable CLS token (``cls_token``) in the sequence; it gets ``pos_embed[:, :1]``
            as its position embedding, so it needs ``pretrain_use_cls_token=True`` (and ``use_abs_pos=True``).
        num_register_tokens: number of register tokens (``reg_token``, DINOv2-reg) kept in the sequence;
            they get no position embedding.

    ``use_act_checkpoint`` checkpoints every block with ``torch.utils.checkpoint`` (non-reentrant) while
    training. ``window_size``/``window_block_indexes``/``use_rel_pos`` exist only to give a clear error.
    """

    def __init__(
        self,
        *,
        use_act_checkpoint: bool = False,
        window_size: int = 0,
        window_block_indexes=(),
        use_rel_pos: bool = False,
        use_cls_token: bool = False,
        num_register_tokens: int = 0,
        use_rope: bool = False,
        rope_base: float = 10000.0,
        rope_rule: str = "axial",
        rope_coords: str = "grid",
        **kwargs,
    ):
        if use_rel_pos:
            raise ValueError(
                "SDPAViT supports global attention only: use_rel_pos=True was requested. Set "
                "model.backbone.net.use_rel_pos=False, or use detectron2.modeling.ViT for relative position."
            )
        if window_size or len(window_block_indexes) > 0:
            raise ValueError(
                f"SDPAViT supports global attention only: window_size={window_size}, window_block_indexes="
                f"{list(window_block_indexes)} was requested. Set model.backbone.net.window_size=0 and "
                "model.backbone.net.window_block_indexes=[], or use detectron2.modeling.ViT for window attention."
            )
        num_register_tokens = int(num_register_tokens)
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        use_abs_pos = kwargs.get("use_abs_pos", True)
        pretrain_use_cls_token = kwargs.get("pretrain_use_cls_token", True)
        if use_rope and use_abs_pos:
            raise ValueError("use_rope=True replaces the absolute position: set use_abs_pos=False")
        if use_cls_token and not use_rope and not (use_abs_pos and pretrain_use_cls_token):
            raise ValueError(
                "use_cls_token=True takes the CLS token's position embedding from pos_embed[:, :1]; it needs "
                f"use_abs_pos=True and pretrain_use_cls_token=True (got {use_abs_pos}, {pretrain_use_cls_token})"
            )
        # detectron2's own act-checkpoint switch needs fairscale: build without it, checkpoint in forward.
        super().__init__(use_act_checkpoint=False, window_size=0, window_block_indexes=(), use_rel_pos=False, **kwargs)
        for blk in self.blocks:
            # Same parameters and initialisation as detectron2's modules; only forward changes.
            blk.__class__ = SDPABlock
            blk.attn.__class__ = SDPAAttention
        self.use_act_checkpoint = bool(use_act_checkpoint)
        self.use_cls_token = bool(use_cls_token)
        self.num_register_tokens = num_register_tokens
        embed_dim = self.patch_embed.proj.out_channels
        self.use_rope, self.rope_coords = bool(use_rope), rope_coords
        if self.use_rope:
            head_dim = embed_dim // self.blocks[0].attn.num_heads
            self.register_buffer("rope_freqs", rope_frequencies(head_dim, rope_base, rope_rule), persistent=False)
        # Created after detectron2's initialisation so that all other parameters match ViT's for the same seed.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.use_cls_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        for p in (self.cls_token, self.reg_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @property
    def num_prefix_tokens(self) -> int:
        """Number of extra tokens before the patch tokens in the sequence (CLS + registers)."""
        return int(self.use_cls_token) + self.num_register_tokens

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x: images ``(B, 3, H, W)``. Returns ``{out_feature: (B, C, H/p, W/p)}`` (patch tokens only)."""
        x = self.patch_embed(x)  # (B, h, w, C)
        B, h, w, C = x.shape
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (h, w))
        x = x.reshape(B, h * w, C)
        prefix = []
        if self.cls_token is not None:
            cls = self.cls_token if self.pos_embed is None else self.cls_token + self.pos_embed[:, :1]
            prefix.append(cls.expand(B, -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        n = self.num_prefix_tokens
        angles = None
        if self.use_rope:
            angles = rope_angles(coords_for_grid(h, w, self.rope_coords, x.device)[None], self.rope_freqs)
        ckpt = self.use_act_checkpoint and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(blk, x, (h, w), n, angles, use_reentrant=False)
            else:
                x = blk(x, (h, w), n, angles)
        x = x[:, n:].reshape(B, h, w, C).permute(0, 3, 1, 2)
        return {self._out_features[0]: x}
