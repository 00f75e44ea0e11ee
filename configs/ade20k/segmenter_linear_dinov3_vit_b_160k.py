# DINOv3 ViT-B/16 + Segmenter linear decoder, ADE20K 512x512, 160k iterations: segmenter_linear_dinov3_vit_s_160k.py
# (DINOv3's backbone semantics: RoPE, CLS + 4 storage tokens, LayerNorm eps 1e-5) at ViT-B's size, which is all
# segmenter_linear_vit_b_160k.py changes from the ViT-S recipe. Convert and train as the ViT-S file says.
_base_ = ["./segmenter_linear_dinov3_vit_s_160k.py"]

model = dict(
    backbone=dict(embed_dims=768, num_layers=12, num_heads=12),
    decode_head=dict(in_channels=768, channels=768),
)
