"""DINOv3 ViT-B/16 in ViTDet Mask R-CNN, 12 epochs: ``mask_rcnn_vit_b_12ep.py`` with DINOv3's backbone semantics.
Convert and train as ``mask_rcnn_dinov3_vit_s_12ep.py`` says (``--keep-tokens``; docs/protocols.md §1, "DINOv3")."""

from transfer.vitdet.plain_vit import dinov3_backbone_kwargs

from .mask_rcnn_vit_b_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(**dinov3_backbone_kwargs())

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
