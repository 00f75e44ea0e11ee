"""DINOv3 ViT-S/16 (official or timm release) in ViTDet Mask R-CNN, 12 epochs: the recipe of
``mask_rcnn_vit_s_12ep.py`` with DINOv3's backbone semantics (docs/protocols.md §1, "DINOv3").

Convert first, keeping the CLS and 4 storage tokens (DINOv3 runs with them in the sequence)::

    python tools/convert_ckpt.py --src dinov3_vits16_pretrain_lvd1689m.pth --dst d2_dinov3_vits.pth \\
        --target detectron2 --keep-tokens --grid 64 64
    tools/train_vitdet.sh configs/vitdet/mask_rcnn_dinov3_vit_s_12ep.py d2_dinov3_vits.pth

The backbone applies DINOv3's 2-D RoPE at any input size (base 100, patch centres normalised to [-1, 1] per axis,
CLS and storage tokens not rotated) instead of an absolute position embedding, with LayerNorm eps 1e-5
(:func:`transfer.vitdet.plain_vit.dinov3_backbone_kwargs`); the converted file's metadata says the same, and
ViTDet refuses a file that disagrees.
"""

from transfer.vitdet.plain_vit import dinov3_backbone_kwargs

from .mask_rcnn_vit_s_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(**dinov3_backbone_kwargs())

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
