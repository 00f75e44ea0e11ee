#!/usr/bin/env python
"""Make the converter's reference fixtures from the OFFICIAL model code (docs/protocols.md §1, "Reference fixtures").

Each fixture is a small random-weight model in an official checkpoint layout, with the official model's own
final-normed patch tokens at three input sizes (one of them the model's stored grid), written to
``tests/fixtures/official/<name>.pt`` in the format of ``tests/support/official_fixtures.py``. The tests then
check that every converted model reproduces those tokens. This script is not run in CI: whoever regenerates the
fixtures checks out the official repositories (no network access is attempted here) and passes their roots::

    git clone https://github.com/facebookresearch/dinov2 /tmp/official/dinov2
    git clone https://github.com/facebookresearch/dinov3 /tmp/official/dinov3
    git clone https://github.com/facebookresearch/mae    /tmp/official/mae
    PYTHONPATH=. .venv/bin/python tools/make_reference_fixtures.py \
        --dinov2 /tmp/official/dinov2 --dinov3 /tmp/official/dinov3 --mae /tmp/official/mae

timm fixtures use the installed timm. Hugging Face layouts have their own script, ``tools/make_hf_fixtures.py``.

Sources and the semantics their official code gives them at other input sizes:

- ``dinov2`` / ``dinov2_chunks``: ``DinoVisionTransformer`` (patch 14, LayerScale, ``block_chunks`` 0 / 2),
  the hub's ``interpolate_offset=0.1``, no antialias; ``dinov2_reg``: 4 registers, the hub's register models'
  ``interpolate_antialias=True, interpolate_offset=0``;
- ``dinov2_pico``: ``dinov2`` at the width of our ``vit_pico`` (64), for ``model.init_from``;
- ``dinov3``: DINOv3's ``DinoVisionTransformer`` as ``dinov3_vits16`` builds it (RoPE base 100, coordinates
  normalised per axis, 4 storage tokens, LayerScale, masked k bias, LayerNorm eps 1e-5), in eval mode;
- ``mae``: ``MaskedAutoencoderViT`` run with ``mask_ratio=0`` and its token shuffle undone; other sizes load the
  weights through MAE's own ``util.pos_embed.interpolate_pos_embed`` into a model built at that size, as MAE's
  fine-tuning does;
- ``timm`` / ``timm_reg``: timm ``VisionTransformer`` with ``dynamic_img_size=True`` (timm's
  ``resample_abs_pos_embed``: bicubic by size, antialias), plain and with registers + ``no_embed_class`` +
  LayerScale.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from contextlib import contextmanager

import torch

from tests.support.official_fixtures import IMAGE_SCALE, save_fixture, size_key

EMBED, HEADS, DEPTH = 32, 2, 2


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere: LayerScale far from its init, norms not 1, visible biases and tokens."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "lambda1", "lambda2")) or "ls1" in name or "ls2" in name:
                p.copy_(torch.empty_like(p).uniform_(0.3, 1.5, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(torch.empty_like(p).uniform_(0.7, 1.3, generator=g))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "token" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(max(p.shape[-1], 1))))


def images(sizes, seed: int) -> dict:
    """Normalised-looking inputs on a 1/32 lattice, so they are stored exactly as int8 (``IMAGE_SCALE``)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for h, w in sizes:
        q = (torch.randn(1, 3, h, w, generator=g) * IMAGE_SCALE).round().clamp(-127, 127)
        out[size_key(h, w)] = q / IMAGE_SCALE
    return out


def stored_images(imgs: dict) -> dict:
    return {k: (x * IMAGE_SCALE).round().to(torch.int8) for k, x in imgs.items()}


@contextmanager
def on_path(root: str):
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)


def generator_info(**extra) -> dict:
    import timm

    return {
        "torch": str(torch.__version__),
        "timm": str(timm.__version__),
        "python": platform.python_version(),
        **extra,
    }


# ----------------------------------------------------------------------------------------------------------------
# DINOv2


def dinov2_fixture(
    root: str, name: str, block_chunks: int, registers: int, antialias: bool, offset: float, embed: int = EMBED
) -> dict:
    with on_path(root):
        from dinov2.models.vision_transformer import DinoVisionTransformer

        model = DinoVisionTransformer(
            img_size=98, patch_size=14, embed_dim=embed, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0,
            init_values=1.0, block_chunks=block_chunks, num_register_tokens=registers,
            interpolate_antialias=antialias, interpolate_offset=offset,
        ).eval()  # fmt: skip
    randomise(model, seed=len(name))
    imgs = images([(98, 98), (56, 56), (168, 168)], seed=1)
    with torch.no_grad():
        tokens = {k: model.forward_features(x)["x_norm_patchtokens"] for k, x in imgs.items()}
    config = {
        "family": "dinov2", "img_size": 98, "patch_size": 14, "embed_dim": embed, "depth": DEPTH,
        "num_heads": HEADS, "block_chunks": block_chunks, "num_register_tokens": registers,
        "interpolate_antialias": antialias, "interpolate_offset": offset, "norm_eps": 1e-6,
    }  # fmt: skip
    return {"checkpoint": model.state_dict(), "config": config, "hf_config": None, "images": stored_images(imgs),
            "tokens": tokens, "generator": generator_info(official="facebookresearch/dinov2")}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# DINOv3


def dinov3_fixture(root: str) -> dict:
    with on_path(root):
        from dinov3.models.vision_transformer import DinoVisionTransformer

        model = DinoVisionTransformer(
            img_size=112, patch_size=16, pos_embed_rope_base=100, pos_embed_rope_normalize_coords="separate",
            pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32", embed_dim=EMBED, depth=DEPTH,
            num_heads=HEADS, ffn_ratio=4, qkv_bias=True, layerscale_init=1.0e-05, norm_layer="layernormbf16",
            ffn_layer="mlp", n_storage_tokens=4, mask_k_bias=True,
        )  # fmt: skip
        model.init_weights()
        model.eval()
    randomise(model, seed=3)
    imgs = images([(112, 112), (64, 64), (192, 192), (64, 96)], seed=2)
    with torch.no_grad():
        tokens = {k: model.forward_features(x)["x_norm_patchtokens"] for k, x in imgs.items()}
    config = {
        "family": "dinov3", "img_size": 112, "patch_size": 16, "embed_dim": EMBED, "depth": DEPTH,
        "num_heads": HEADS, "n_storage_tokens": 4, "mask_k_bias": True, "rope_base": 100.0,
        "rope_normalize_coords": "separate", "norm_eps": 1e-5, "layerscale": True,
    }  # fmt: skip
    return {"checkpoint": model.state_dict(), "config": config, "hf_config": None, "images": stored_images(imgs),
            "tokens": tokens, "generator": generator_info(official="facebookresearch/dinov3")}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# MAE


def _mae_block_without_qk_scale():
    """MAE's code passes ``qk_scale=None`` to timm's ``Block`` (timm 0.3.2); today's timm Block computes the same
    block without that argument, so it is dropped."""
    import timm.models.vision_transformer as tv

    base = tv.Block

    class Block(base):
        def __init__(self, *args, qk_scale=None, **kwargs):
            assert qk_scale is None
            super().__init__(*args, **kwargs)

    return Block


def mae_fixture(root: str) -> dict:
    import numpy as np

    if not hasattr(np, "float"):  # MAE's sin-cos table uses the alias removed in NumPy 1.24 (same type)
        np.float = float
    with on_path(root):
        import models_mae
        from util.pos_embed import interpolate_pos_embed

        models_mae.Block = _mae_block_without_qk_scale()

        def build(img_size):
            return models_mae.MaskedAutoencoderViT(
                img_size=img_size, patch_size=16, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4.0,
            ).eval()  # fmt: skip

        model = build(112)
        randomise(model, seed=5)
        with torch.no_grad():  # MAE's position embedding is a fixed sin-cos table: keep it
            from util.pos_embed import get_2d_sincos_pos_embed

            table = get_2d_sincos_pos_embed(EMBED, 7, cls_token=True)
            model.pos_embed.copy_(torch.from_numpy(table).float()[None])
        state = model.state_dict()
        imgs = images([(112, 112), (64, 64), (192, 192)], seed=3)
        tokens = {}
        for key, x in imgs.items():
            m = build(x.shape[-1])
            sd = {k: v.clone() for k, v in state.items()}
            interpolate_pos_embed(m, sd)  # MAE's own resize (prints when it resizes)
            sd = {k: v for k, v in sd.items() if not k.startswith("decoder_pos_embed")}
            m.load_state_dict(sd, strict=False)
            with torch.no_grad():
                torch.manual_seed(0)
                latent, _, ids_restore = m.forward_encoder(x, mask_ratio=0.0)
                patches = latent[:, 1:]
                tokens[key] = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, patches.shape[-1]))
    config = {"family": "mae", "img_size": 112, "patch_size": 16, "embed_dim": EMBED, "depth": DEPTH,
              "num_heads": HEADS, "norm_eps": 1e-6}  # fmt: skip
    checkpoint = {"model": state}  # as MAE's pretraining saves it
    return {"checkpoint": checkpoint, "config": config, "hf_config": None, "images": stored_images(imgs),
            "tokens": tokens, "generator": generator_info(official="facebookresearch/mae")}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# timm


def timm_fixture(registers: int) -> dict:
    from timm.models.vision_transformer import VisionTransformer

    kw = dict(img_size=112, patch_size=16, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS, num_classes=0,
              dynamic_img_size=True)  # fmt: skip
    if registers:
        kw.update(reg_tokens=registers, no_embed_class=True, init_values=1e-5)
    model = VisionTransformer(**kw).eval()
    randomise(model, seed=7 + registers)
    imgs = images([(112, 112), (64, 64), (192, 192)], seed=4)
    with torch.no_grad():
        tokens = {k: model.forward_features(x)[:, model.num_prefix_tokens :] for k, x in imgs.items()}
    config = {"family": "timm", "timm_kwargs": {k: v for k, v in kw.items()}, "norm_eps": 1e-6,
              "num_heads": HEADS}  # fmt: skip
    return {"checkpoint": model.state_dict(), "config": config, "hf_config": None, "images": stored_images(imgs),
            "tokens": tokens, "generator": generator_info()}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dinov2", help="root of a facebookresearch/dinov2 checkout")
    ap.add_argument("--dinov3", help="root of a facebookresearch/dinov3 checkout")
    ap.add_argument("--mae", help="root of a facebookresearch/mae checkout")
    ap.add_argument("--no-timm", action="store_true", help="skip the timm fixtures")
    args = ap.parse_args(argv)
    made = {}
    if args.dinov2:
        made["dinov2"] = dinov2_fixture(args.dinov2, "dinov2", 0, 0, False, 0.1)
        made["dinov2_chunks"] = dinov2_fixture(args.dinov2, "dinov2_chunks", 2, 0, False, 0.1)
        made["dinov2_reg"] = dinov2_fixture(args.dinov2, "dinov2_reg", 0, 4, True, 0.0)
        # the size of our vit_pico (64 wide, 2 blocks, 2 heads), for continued pretraining (model.init_from)
        made["dinov2_pico"] = dinov2_fixture(args.dinov2, "dinov2_pico", 0, 0, False, 0.1, embed=64)
    if args.dinov3:
        made["dinov3"] = dinov3_fixture(args.dinov3)
    if args.mae:
        made["mae"] = mae_fixture(args.mae)
    if not args.no_timm:
        made["timm"] = timm_fixture(0)
        made["timm_reg"] = timm_fixture(4)
    for name, fx in made.items():
        path = save_fixture(name, fx)
        print(f"{name}: {path} ({path.stat().st_size / 1024:.0f} KiB), sizes {sorted(fx['tokens'])}")
    if not made:
        ap.error("nothing to make: pass --dinov2/--dinov3/--mae roots (timm fixtures need no checkout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
