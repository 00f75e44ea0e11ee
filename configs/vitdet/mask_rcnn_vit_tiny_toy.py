"""Tiny ViTDet Mask R-CNN on the toy COCO set (CPU, minutes): the COCO protocol's code path at toy scale.

* Data: ``toy_coco_train`` / ``toy_coco_val``, registered by ``transfer.vitdet.train`` from a ``train.toy_coco_root=``
  argument, else ``$TOY_COCO_ROOT`` (the only variable this config reads; not ``DETECTRON2_DATASETS``), else
  ``train.toy_coco_root`` below (``data/toy/coco``, written by ``tools/make_toy_data.py``), LSJ at 128 px, batch 2.
* Backbone: the defaults below are a tiny ViT; with ``--init CKPT`` the architecture (``embed_dim``, ``depth``,
  ``num_heads``, ``patch_size``, ``pretrain_img_size``, tokens) is taken from the checkpoint's metadata.
  The checkpoint's position grid should be ``IMAGE_SIZE / patch_size`` (8x8 here) so that no interpolation
  happens; another grid works (bicubic resize each forward) and is reported as a warning.
* Fewer proposals and ROI samples (fast on CPU), fp32, 300 iterations, evaluation at the end, checkpoints every
  100 iterations; lr steps at fixed fractions of ``train.max_iter`` so that shorter runs keep the schedule's shape.
"""

from toydata import COCO_CATEGORIES
from transfer.vitdet.data import lsj_dataloader

from .base_mask_rcnn_vit import lr_multiplier, model, optimizer, train

IMAGE_SIZE = 128

model.backbone.net.img_size = IMAGE_SIZE
model.backbone.net.pretrain_img_size = IMAGE_SIZE
model.backbone.net.patch_size = 16
model.backbone.net.embed_dim = 192
model.backbone.net.depth = 4
model.backbone.net.num_heads = 3
model.backbone.net.drop_path_rate = 0.0
model.backbone.square_pad = IMAGE_SIZE
model.roi_heads.num_classes = len(COCO_CATEGORIES)
model.proposal_generator.pre_nms_topk = (200, 200)
model.proposal_generator.post_nms_topk = (100, 100)
model.roi_heads.batch_size_per_image = 64

dataloader = lsj_dataloader(
    image_size=IMAGE_SIZE,
    train_names="toy_coco_train",
    test_names="toy_coco_val",
    total_batch_size=2,
    num_workers=0,
)

train.max_iter = 300
train.eval_period = "${.max_iter}"
train.checkpointer.period = 100
train.log_period = 20
train.amp.enabled = False
train.ddp.fp16_compression = False
train.toy_coco_root = "data/toy/coco"  # where tools/make_toy_data.py writes it; $TOY_COCO_ROOT overrides it

optimizer.lr = 2e-4

lr_multiplier.milestones = None
lr_multiplier.milestone_fractions = [0.8, 0.93]
lr_multiplier.warmup_iters = 20

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
