# Toy version of the Segmenter linear protocol: any small converted ViT on the generated toy ADE set
# (toydata.make_toy_ade: images/{training,validation}/*.jpg, annotations/{training,validation}/*.png,
# 0 = ignore, classes 1..K). Minutes on a CPU; for checking the plumbing, not for numbers.
#
#   python tools/make_toy_data.py --out data/toy     # once: the ADE part lands in data/toy/ade (the default root)
#   tools/train_ade.sh configs/ade20k/segmenter_linear_vit_tiny_toy.py CKPT      # other root: TOY_ADE_ROOT=...
#   (or --data-root; ADE20K_ROOT is the real set's variable and is not read here)
#
# What the entry fills in:
#   * the backbone's embed_dims / num_layers / num_heads / patch_size / img_size / mlp_ratio and the decode
#     head's channels from the checkpoint (adapt_backbone_to_checkpoint = True); the 64 px crops below are fed
#     as they are and mmseg interpolates the position embedding if the checkpoint's grid differs;
#   * num_classes = None: K is read from a metadata JSON in data_root (num_classes / classes) or, failing
#     that, from the largest label in the annotation PNGs; set --cfg-options num_classes=K to force it.
_base_ = ["./_segmenter_linear_base.py"]

adapt_backbone_to_checkpoint = True
num_classes = None
total_batch_size = 4
crop_size = (64, 64)
data_root_env = "TOY_ADE_ROOT"  # the only variable this config reads (not ADE20K_ROOT)
data_root = "data/toy/ade"

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=(64, 64), embed_dims=64, num_layers=2, num_heads=2),
    decode_head=dict(in_channels=64, channels=64, num_classes=8),
    test_cfg=dict(_delete_=True, mode="whole"),
)

dataset_type = "BaseSegDataset"  # generic ADE-layout folder with K classes (ADE20KDataset insists on 150)


def _at_toy_scale(pipeline):
    """The base recipe's pipeline with shorter side 64 instead of 512 and 64 px crops (a function: mmengine keeps
    it out of the config; ``_base_`` is the base config while this file runs)."""
    toy = dict(
        RandomResize=dict(scale=(256, 64), ratio_range=(0.75, 1.5)),
        RandomCrop=dict(crop_size=crop_size),
        Resize=dict(scale=(256, 64)),
    )
    return [dict(step, **toy.get(step["type"], {})) for step in pipeline]


train_pipeline = _at_toy_scale(_base_.train_pipeline)
test_pipeline = _at_toy_scale(_base_.test_pipeline)

_toy_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    img_suffix=".jpg",
    seg_map_suffix=".png",
    reduce_zero_label=True,
)
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_toy_dataset, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_toy_dataset, pipeline=test_pipeline),
)
test_dataloader = val_dataloader

# A higher lr than the 160k default (3e-5): a few hundred iterations should visibly move the loss.
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=1e-2))
param_scheduler = [dict(type="PolyLR", eta_min=1e-4 * 0.1, power=0.9, begin=0, end=300, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=300, val_interval=300)
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=100, max_keep_ckpts=2),
)
env_cfg = dict(cudnn_benchmark=False)
