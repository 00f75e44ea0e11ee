# ViT-S/16 + Segmenter linear decoder, ADE20K 512x512, 160k iterations at total batch 16 (paper app. B.3).
# Pretrained weights: a converted MMSeg-target checkpoint with a 32x32 pos_embed (tools/convert_ckpt.py),
# given as tools/train_ade.sh configs/ade20k/segmenter_linear_vit_s_160k.py CKPT [--sweep] [--seeds 2].
_base_ = ["./_segmenter_linear_base.py"]

model = dict(
    backbone=dict(embed_dims=384, num_layers=12, num_heads=6),
    decode_head=dict(in_channels=384, channels=384),
)
