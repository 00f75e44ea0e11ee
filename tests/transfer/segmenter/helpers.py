"""A tiny converted MMSeg checkpoint, a toy ADE set and model building for the Segmenter tests."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")


from pretrain.data.normalization import IMAGENET_MEAN as IMAGENET_MEAN_N
from pretrain.data.normalization import IMAGENET_MEAN_255, IMAGENET_STD_255
from pretrain.data.normalization import IMAGENET_STD as IMAGENET_STD_N
from tests.support.paths import REPO
from transfer.segmenter import integration  # noqa: E402

CFG_DIR = os.path.join(REPO, "configs", "ade20k")
TOY_CFG = os.path.join(CFG_DIR, "segmenter_linear_vit_tiny_toy.py")
IMAGENET_MEAN = list(
    IMAGENET_MEAN_255
)  # MMEngine configs cannot import the one definition; the configs' copy must equal it
IMAGENET_STD = list(IMAGENET_STD_255)

# tiny reference architecture (64 px input, patch 16 -> 4x4 grid)
DIM, DEPTH, HEADS, PATCH, GRID = 32, 2, 2, 16, 4


def make_toy_ade_fixture(root, num_train=8, num_val=4, size=64, num_classes=4, seed=0):
    """ADE-layout toy set: class-coloured rectangles plus noise; labels 1..K, 0 = ignore (a thin border)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_classes + 1, 3))
    for split, n in (("training", num_train), ("validation", num_val)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
        for i in range(n):
            label = np.full((size, size), rng.integers(1, num_classes + 1), dtype=np.uint8)
            for _ in range(3):
                y0, x0 = rng.integers(0, size - 8, size=2)
                h, w = rng.integers(8, size // 2, size=2)
                label[y0 : y0 + h, x0 : x0 + w] = rng.integers(1, num_classes + 1)
            label[:, :2] = 0
            img = np.clip(colours[label] + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, "images", split, f"toy_{i:04d}.jpg"), quality=95)
            Image.fromarray(label).save(os.path.join(root, "annotations", split, f"toy_{i:04d}.png"))
    return root


def reference_vit(seed=1):
    """An mmseg VisionTransformer with random weights far from any default init."""
    from mmseg.models.backbones import VisionTransformer

    torch.manual_seed(seed)
    ref = VisionTransformer(
        img_size=(GRID * PATCH, GRID * PATCH),
        patch_size=PATCH,
        embed_dims=DIM,
        num_layers=DEPTH,
        num_heads=HEADS,
        final_norm=True,
        patch_bias=True,
        with_cls_token=True,
        norm_cfg=dict(type="LN", eps=1e-6),
        interpolate_mode="bicubic",
    )
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("ln1.weight") or name.endswith("ln2.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    ref.eval()
    return ref


def save_converted(ref, path, rename=None):
    """Write a converter-format MMSeg-target checkpoint of ``ref`` (optionally renaming one key)."""
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    if rename:
        old, new = rename
        sd[new] = sd.pop(old)
    meta = dict(
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        patch_size=PATCH,
        grid=[GRID, GRID],
        mean=list(IMAGENET_MEAN_N),
        std=list(IMAGENET_STD_N),
        source="test",
    )
    torch.save({"state_dict": sd, "meta": meta}, path)
    return path


def _build_model(cfg):
    from mmseg.registry import MODELS

    integration.setup_mmseg()
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model
