"""Shared base of the paper's COCO protocol (appendix B.2): ViTDet Mask R-CNN on a plain ViT, LSJ 1024.

Built from detectron2's model-zoo pieces that ship in the pip package (``common/models/mask_rcnn_vitdet.py``,
``common/optim.py``, ``common/train.py``) with our backbone swapped in:

* ``model.backbone.net`` = :class:`transfer.vitdet.backbone.SDPAViT` built from
  :func:`transfer.vitdet.plain_vit.plain_vit_kwargs`: global attention in every block
  (``window_block_indexes=[]``, ``window_size=0``), no relative position (``use_rel_pos=False``), absolute
  position embeddings from the converted checkpoint at the target grid (``pretrain_img_size=1024`` -> 64x64,
  ``pretrain_use_cls_token=True``: the converter writes a CLS slot), attention through SDPA,
  ``use_act_checkpoint`` as a memory switch.
* LSJ loader (:func:`transfer.vitdet.data.lsj_dataloader`), total batch 64, AMP.
* AdamW, weight decay 0.1 (none on norms, biases-with-norms, ``pos_embed`` and the extra tokens), layer-wise lr
  decay 0.7 over ``depth`` blocks, 250 warm-up iterations from 0.001, 22,128 iterations (12 epochs) with lr x0.1
  at 19,667 and 21,306.

The ``mask_rcnn_vit_{s,b}_*`` files set size and lr. ``transfer.vitdet.train`` fills the backbone's
architecture (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``pretrain_img_size``, tokens) from the
init checkpoint's metadata and refuses a checkpoint that does not match.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from transfer.vitdet.backbone import SDPAViT
from transfer.vitdet.data import lsj_dataloader
from transfer.vitdet.plain_vit import plain_vit_kwargs
from transfer.vitdet.solver import make_vit_lr_factor_func, vitdet_lr_multiplier

IMAGE_SIZE = 1024

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone.net = L(SDPAViT)(
    **plain_vit_kwargs(img_size=IMAGE_SIZE, patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1),
    residual_block_indexes=[],
    use_act_checkpoint=False,
    use_cls_token=False,
    num_register_tokens=0,
    out_feature="last_feat",
)
model.backbone.square_pad = IMAGE_SIZE

dataloader = lsj_dataloader(image_size=IMAGE_SIZE, total_batch_size=64, num_workers=4)

train = model_zoo.get_config("common/train.py").train
train.output_dir = ""  # empty: outputs/vitdet/<config name> (or --output / OUTPUT_DIR)
train.init_checkpoint = ""  # set by --init / tools/train_vitdet.sh; never a URL (no downloads)
train.max_iter = 22128
train.amp.enabled = True
train.ddp.fp16_compression = True
train.checkpointer.period = 5000
train.eval_period = 5000
train.log_period = 20
train.seed = 0

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 3e-4
optimizer.weight_decay = 0.1
optimizer.betas = (0.9, 0.999)
optimizer.params.weight_decay_norm = 0.0
optimizer.params.lr_factor_func = L(make_vit_lr_factor_func)(
    lr_decay_rate=0.7, num_layers="${model.backbone.net.depth}"
)
optimizer.params.overrides = {
    "pos_embed": {"weight_decay": 0.0},
    "cls_token": {"weight_decay": 0.0},
    "reg_token": {"weight_decay": 0.0},
}

lr_multiplier = L(vitdet_lr_multiplier)(
    max_iter="${train.max_iter}",
    milestones=[19667, 21306],
    warmup_iters=250,
    warmup_factor=0.001,
)
