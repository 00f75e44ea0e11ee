"""DINOv3 ViT-B/16 (official or timm release) in ViTDet Mask R-CNN, 12 epochs: the recipe of
``mask_rcnn_vit_b_12ep.py`` with DINOv3's backbone semantics (docs/protocols.md §1, "DINOv3").

Convert first, keeping the CLS and 4 storage tokens (DINOv3 runs with them in the sequence)::

    python tools/convert_ckpt.py --src dinov3_vitb16_pretrain_lvd1689m.pth --dst d2_dinov3_vitb.pth \\
        --target detectron2 --keep-tokens --grid 64 64
    tools/train_vitdet.sh configs/vitdet/mask_rcnn_dinov3_vit_b_12ep.py d2_dinov3_vitb.pth

The backbone applies DINOv3's 2-D RoPE at any input size (base 100, patch centres normalised to [-1, 1] per axis,
CLS and storage tokens not rotated) instead of an absolute position embedding, with LayerNorm eps 1e-5; the
converted file's metadata says the same, and ViTDet refuses a file that disagrees.
"""

from functools import partial

from torch import nn

from .mask_rcnn_vit_b_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(
    use_abs_pos=False,
    pretrain_use_cls_token=False,
    use_rope=True,
    rope_base=100.0,
    rope_rule="dinov3",
    rope_coords="normalized",
    use_cls_token=True,
    num_register_tokens=4,
    norm_layer=partial(nn.LayerNorm, eps=1e-5),
)

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
