"""Small random backbones written as our exported ``backbone.pth``, for the transfer tests."""

import torch

from pretrain.export import export_backbone
from pretrain.models.vit import ViTConfig, build_vit


def exported_random_rope_vit(folder, embed_dim: int, img_size: int, noise: float, **overrides):
    """A 2-block ``vit_pico`` with RoPE and no additive positions (seed 0, every weight moved by ``noise`` x
    N(0, 1)), exported to ``folder/backbone.pth``. Returns ``(model in eval mode, path)``."""
    torch.manual_seed(0)
    cfg = ViTConfig.from_arch(
        "vit_pico",
        embed_dim=embed_dim,
        depth=2,
        num_heads=2,
        img_size=img_size,
        patch_size=16,
        pos_field=False,
        pos_embed_type="none",
        rope=True,
        layerscale=None,
        **overrides,
    )
    model = build_vit(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    path = folder / "backbone.pth"
    export_backbone(model, path)
    return model, path
