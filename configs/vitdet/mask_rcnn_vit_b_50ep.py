"""ViT-B/16 ViTDet Mask R-CNN, 50 epochs (Table 2): iterations and lr steps of the 12-epoch schedule x 50/12.

22,128 x 50/12 = 92,200 iterations; steps at 19,667 x 50/12 = 81,946 and 21,306 x 50/12 = 88,775 (the same
fractions of the schedule). Everything else as in ``mask_rcnn_vit_b_12ep.py``.
"""

from .mask_rcnn_vit_b_12ep import dataloader, lr_multiplier, model, optimizer, train

train.max_iter = 92200
lr_multiplier.milestones = [81946, 88775]

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
