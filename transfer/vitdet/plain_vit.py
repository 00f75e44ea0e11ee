"""Constructor arguments of detectron2's ``ViT`` (and :class:`~transfer.vitdet.backbone.SDPAViT`) for a plain ViT.

A plain ViT (docs/protocols.md §2) has global attention in every block (``window_size=0``,
``window_block_indexes=[]``), no relative position (``use_rel_pos=False``) and absolute position embeddings with a
CLS slot at the pretraining size (``pretrain_use_cls_token=True``), which is what the converter's detectron2 target
writes. The ViTDet configs, the converter's parity check, the attention benchmark and the tests all build their
backbones from :func:`plain_vit_kwargs`. This module imports neither detectron2 nor the backbone.
"""

from __future__ import annotations

from functools import partial

from torch import nn


def plain_vit_kwargs(
    *,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4,
    norm_eps: float = 1e-6,
    drop_path_rate: float = 0.0,
    pretrain_img_size: int | None = None,
) -> dict:
    """Keyword arguments of a plain ``ViT``; ``pretrain_img_size`` defaults to ``img_size`` (no resize at load)."""
    return dict(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        drop_path_rate=drop_path_rate,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=norm_eps),
        window_size=0,
        window_block_indexes=[],
        use_rel_pos=False,
        pretrain_img_size=img_size if pretrain_img_size is None else pretrain_img_size,
        pretrain_use_cls_token=True,
    )


def dinov3_backbone_kwargs(num_storage_tokens: int = 4, rope_base: float = 100.0, norm_eps: float = 1e-5) -> dict:
    """The ``SDPAViT`` arguments that make a plain ViT run as a DINOv3 release does (docs/protocols.md §1,
    "DINOv3"): 2-D RoPE (rule ``dinov3``, coordinates normalised per axis) instead of ``pos_embed``, the CLS and
    storage tokens kept in the sequence, LayerNorm eps 1e-5."""
    return dict(
        use_abs_pos=False,
        pretrain_use_cls_token=False,
        use_rope=True,
        rope_base=float(rope_base),
        rope_rule="dinov3",
        rope_coords="normalized",
        use_cls_token=True,
        num_register_tokens=int(num_storage_tokens),
        norm_layer=partial(nn.LayerNorm, eps=norm_eps),
    )
