# Segmenter linear decoder on a plain ViT, ADE20K, 512x512, 160k iterations (paper appendix B.3, docs/protocols.md §3).
#
# Shared base of segmenter_linear_vit_{s,b}_160k.py and segmenter_linear_vit_tiny_toy.py. Run it through
#   tools/train_ade.sh CONFIG CKPT [--sweep] [--seeds 2]
# or python -m transfer.segmenter.train CONFIG --init CKPT
# The entry (transfer/segmenter/train.py) derives what must follow the command line:
#   * train_dataloader.batch_size = total_batch_size // world size (error if not divisible);
#   * every PolyLR's eta_min = min_lr_ratio x the final lr (after --lr / --cfg-options), end = max_iters;
#   * model.backbone.init_cfg = Pretrained(CKPT), checked against the checkpoint's metadata
#     (adapt_backbone_to_checkpoint=True instead copies the dims from it), and verified tensor by tensor
#     before the first iteration (VerifyPretrainedBackboneHook: mmseg loads with strict=False and would
#     otherwise drop mismatching keys silently);
#   * the datasets' data_root = --data-root, --cfg-options data_root=..., $ADE20K_ROOT or data_root below.
# Nothing here downloads anything: the backbone weights come only from --init.
default_scope = "mmseg"
custom_imports = dict(
    imports=["transfer.segmenter.integration", "transfer.segmenter.transforms"], allow_failed_imports=False
)

# ---------------------------------------------------------------- protocol numbers (read by the entry)
total_batch_size = 16  # over all GPUs; per-GPU batch = 16 // world size
min_lr_ratio = 0.1  # poly schedule ends at 0.1 x lr (paper: min_lr = 0.1 x lr)
adapt_backbone_to_checkpoint = False  # the paper's configs check the checkpoint instead of adapting to it
num_classes = 150
crop_size = (512, 512)
# The entry takes the root from --data-root, else $ADE20K_ROOT (data_root_env), else data_root below
# (transfer/dataset_roots.py; no {{$VAR}} substitution here, so that the toy config does not pick it up).
data_root_env = "ADE20K_ROOT"
data_root = "data/ade/ADEChallengeData2016"

# ImageNet mean/std (pretrain/data/normalization.py, IMAGENET_MEAN_255; MMEngine configs cannot import it, a test
# checks that the two agree): our weights (and DINOv2/iBOT/MAE/DropPos/LOCA) are trained with them.
# (mmseg's Segmenter configs use 127.5/127.5 for the AugReg weights; not ours.)
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)

# ---------------------------------------------------------------- model
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type="VisionTransformer",
        img_size=(512, 512),
        patch_size=16,
        in_channels=3,
        embed_dims=384,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4,
        out_indices=-1,  # last layer (mmseg maps -1 to num_layers - 1)
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        with_cls_token=True,
        output_cls_token=False,
        final_norm=True,
        patch_bias=True,  # trap: mmseg 1.2.2 defaults to False and would drop the converted patch bias
        norm_cfg=dict(type="LN", eps=1e-6),
        act_cfg=dict(type="GELU"),
        interpolate_mode="bicubic",
        init_cfg=None,  # set to Pretrained(--init CKPT) by the entry
    ),
    # Segmenter "linear" decoder = a 1x1 classifier on the last-layer patch tokens, bilinear upsampling.
    decode_head=dict(
        type="FCNHead",
        in_channels=384,
        channels=384,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=num_classes,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    # Single-scale sliding-window inference on the short-side-512 image: 512x512 windows, stride 341 (about
    # 2/3 of a window, so neighbouring windows overlap by 1/3; logits are averaged where they overlap).
    # (choice; mmseg's Segmenter configs use stride 480. The alternative is model.test_cfg=dict(mode='whole'),
    # which feeds the whole resized image at once and interpolates the position embedding.)
    test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341)),
)

# ---------------------------------------------------------------- data (mmseg's ADE20K recipe)
dataset_type = "ADE20KDataset"
# LoadAnnotationsNamingFile: mmseg's LoadAnnotations, whose errors name an unreadable label file
# (transfer/segmenter/transforms.py).
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotationsNamingFile", reduce_zero_label=True),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotationsNamingFile", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]


def _ade_loader(split, pipeline, batch_size, sampler):
    """A dataloader over images/<split> and annotations/<split> (a function: mmengine keeps it out of the config)."""
    return dict(
        batch_size=batch_size,
        num_workers=4,
        persistent_workers=True,
        sampler=sampler,
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"),
            pipeline=pipeline,
        ),
    )


# per-GPU batch 16: the entry sets total_batch_size // world size
train_dataloader = _ade_loader("training", train_pipeline, 16, dict(type="InfiniteSampler", shuffle=True))
val_dataloader = _ade_loader("validation", test_pipeline, 1, dict(type="DefaultSampler", shuffle=False))
test_dataloader = val_dataloader
# IoUMetric reports aAcc, mIoU and mAcc (percent) for iou_metrics=['mIoU'].
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator

# ---------------------------------------------------------------- optimisation (paper: AdamW + poly)
# Default point of the sweep wd {1e-2, 1e-4} x lr {8e-5, 3e-5, 1e-5, 8e-6}: lr 3e-5, wd 1e-2 (choice).
# Weight decay applies to all parameters (plain AdamW, as in the Segmenter/CrIBo recipes).
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=3e-5, betas=(0.9, 0.999), weight_decay=1e-2),
    clip_grad=None,
)
param_scheduler = [
    # eta_min is recomputed by the entry as min_lr_ratio x the final lr; this value matches the default lr.
    dict(type="PolyLR", eta_min=3e-5 * min_lr_ratio, power=0.9, begin=0, end=160000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

# ---------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000, max_keep_ckpts=2),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
custom_hooks = [dict(type="VerifyPretrainedBackboneHook")]
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),  # the entry switches to gloo when CUDA is absent
)
# Progress (it/s, ETA, losses) goes to the console log; scalars to <work_dir>/<time>/vis_data/scalars.json
# (JSON lines) and TensorBoard.
vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0)
