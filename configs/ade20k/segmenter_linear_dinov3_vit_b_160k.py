# DINOv3 ViT-B/16 + Segmenter linear decoder, ADE20K 512x512, 160k iterations: segmenter_linear_vit_b_160k.py with
# DINOv3's backbone semantics (docs/protocols.md §1, "DINOv3"): 2-D RoPE (base 100, coordinates normalised per
# axis) in transfer.segmenter.rope_vit.RoPEVisionTransformer, the CLS token and 4 storage tokens in the sequence,
# LayerNorm eps 1e-5. Convert with
#   python tools/convert_ckpt.py --src dinov3_vitb16_pretrain_lvd1689m.pth --dst mmseg_dinov3_vitb.pth \
#       --target mmseg --grid 32 32
# and train with tools/train_ade.sh configs/ade20k/segmenter_linear_dinov3_vit_b_160k.py mmseg_dinov3_vitb.pth
_base_ = ["./segmenter_linear_vit_b_160k.py"]

model = dict(
    backbone=dict(
        type="RoPEVisionTransformer",
        rope_base=100.0,
        rope_rule="dinov3",
        rope_coords="normalized",
        num_register_tokens=4,
        norm_cfg=dict(type="LN", eps=1e-5),
    ),
)
