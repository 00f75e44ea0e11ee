"""ViT-S/16 ViTDet Mask R-CNN, 12 epochs (22,128 iterations at batch 64), lr 1e-4 (paper appendix B.2)."""

from .base_mask_rcnn_vit import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1)
optimizer.lr = 1e-4

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
