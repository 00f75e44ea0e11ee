#!/usr/bin/env python
"""Make the converter's Hugging Face reference fixtures from the transformers code (docs/protocols.md §1).

Each fixture is a small random-weight transformers model, its weights exactly as ``save_pretrained`` writes them
to ``model.safetensors`` (the layout of every Hugging Face model directory), its ``config.json`` contents and the
model's own final-normed patch tokens (``last_hidden_state`` without CLS / registers: the models apply their final
LayerNorm to ``last_hidden_state``) at four input sizes: the stored grid, a smaller and a larger square one and a
non-square one. Written to ``tests/fixtures/official/hf_<name>.pt`` in the format of
``tests/support/official_fixtures.py``. Not run in CI (transformers is not a dependency of this project); whoever
regenerates the fixtures installs transformers (made with transformers 5.24, torch 2.13)::

    pip install --target /tmp/hfpkgs transformers
    PYTHONPATH=/tmp/hfpkgs:. .venv/bin/python tools/make_hf_fixtures.py

Models (embed dim 32, 2 heads, depth 2, MLP hidden 128, as the official fixtures of
``tools/make_reference_fixtures.py``):

- ``hf_dinov2``: ``Dinov2Model``, patch 14, stored grid 7x7; other sizes resize ``position_embeddings`` by size
  (bicubic, no antialias, float32);
- ``hf_dinov2_reg``: ``Dinov2WithRegistersModel``, 4 registers, same but with ``antialias=True``;
- ``hf_vitmae``: ``ViTMAEModel``, patch 16, grid 7x7, ``mask_ratio=0`` and ``noise=arange(N)`` (so the random
  masking keeps every patch in order), ``interpolate_pos_encoding=True`` at the other sizes;
- ``hf_dinov3``: ``DINOv3ViTModel``, patch 16, 4 register tokens, LayerScale, RoPE base 100, eval mode, one
  non-square input.

Each fixture's ``config["state_dict_keys"]`` maps the saved key to the key of the same tensor in the in-memory
``model.state_dict()`` of this transformers version (which renames some modules at load time).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference_fixtures import images, randomise, stored_images  # noqa: E402

from tests.support.official_fixtures import save_fixture  # noqa: E402

EMBED, HEADS, DEPTH, HIDDEN = 32, 2, 2, 128


def saved_state(model) -> tuple[dict, dict]:
    """What ``save_pretrained`` writes (tensors and config.json contents), plus saved key -> in-memory key."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        state = load_file(os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)
    memory = model.state_dict()
    keys = {}
    for k, v in state.items():
        same = [m for m, t in memory.items() if t.shape == v.shape and torch.equal(t.cpu(), v)]
        same = [m for m in same if m == k] or same
        if len(same) != 1:
            raise RuntimeError(f"saved tensor {k!r} matches {len(same)} in-memory tensors: {same[:4]}")
        keys[k] = same[0]
    return state, config, keys


def randomise_hf(model, seed: int) -> None:
    """``randomise`` plus visible learned position embeddings (HF names them ``position_embeddings``)."""
    randomise(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("position_embeddings"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def generator_info() -> dict:
    import transformers

    return {"transformers": transformers.__version__, "torch": str(torch.__version__),
            "python": platform.python_version()}  # fmt: skip


def fixture(model, imgs: dict, run, prefix: int, config: dict) -> dict:
    """Run ``run(model, x)`` (returns last_hidden_state) on every image and pack the fixture."""
    model.eval()
    with torch.no_grad():
        tokens = {k: run(model, x)[:, prefix:] for k, x in imgs.items()}
    state, hf_config, keys = saved_state(model)
    config = {**config, "embed_dim": EMBED, "depth": DEPTH, "num_heads": HEADS, "state_dict_keys": keys}
    return {"checkpoint": state, "config": config, "hf_config": hf_config, "images": stored_images(imgs),
            "tokens": tokens, "generator": generator_info()}  # fmt: skip


def dinov2(registers: int) -> dict:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    kw = dict(
        hidden_size=EMBED,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        mlp_ratio=HIDDEN // EMBED,
        image_size=98,
        patch_size=14,
        layerscale_value=1e-5,
    )
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
    else:
        model = Dinov2Model(Dinov2Config(**kw))
    randomise_hf(model, seed=11 + registers)
    imgs = images([(98, 98), (56, 56), (168, 168), (56, 84)], seed=11)
    rule = "size_antialias" if registers else "size"
    cfg = {"family": "hf_dinov2", "class": type(model).__name__, "img_size": 98, "patch_size": 14,
           "num_register_tokens": registers, "pos_interpolation": rule, "norm_eps": 1e-6}  # fmt: skip
    return fixture(model, imgs, lambda m, x: m(pixel_values=x).last_hidden_state, 1 + registers, cfg)


def vitmae() -> dict:
    from transformers import ViTMAEConfig, ViTMAEModel

    model = ViTMAEModel(
        ViTMAEConfig(
            hidden_size=EMBED,
            num_hidden_layers=DEPTH,
            num_attention_heads=HEADS,
            intermediate_size=HIDDEN,
            image_size=112,
            patch_size=16,
            mask_ratio=0.0,
        )
    )
    randomise_hf(model, seed=21)
    imgs = images([(112, 112), (64, 64), (192, 192), (64, 96)], seed=21)

    def run(m, x):
        n = (x.shape[-2] // 16) * (x.shape[-1] // 16)
        out = m(pixel_values=x, noise=torch.arange(n, dtype=torch.float32)[None], interpolate_pos_encoding=True)
        assert torch.equal(out.ids_restore, torch.arange(n)[None]) and not out.mask.any(), "masking reordered"
        return out.last_hidden_state

    cfg = {"family": "hf_vitmae", "class": "ViTMAEModel", "img_size": 112, "patch_size": 16,
           "pos_interpolation": "size", "norm_eps": 1e-12}  # fmt: skip
    return fixture(model, imgs, run, 1, cfg)


def dinov3() -> dict:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    model = DINOv3ViTModel(
        DINOv3ViTConfig(
            hidden_size=EMBED,
            num_hidden_layers=DEPTH,
            num_attention_heads=HEADS,
            intermediate_size=HIDDEN,
            image_size=112,
            patch_size=16,
            num_register_tokens=4,
            layerscale_value=1e-5,
            rope_theta=100.0,
        )
    )
    randomise_hf(model, seed=31)
    imgs = images([(112, 112), (64, 64), (192, 192), (64, 96)], seed=31)
    cfg = {"family": "hf_dinov3", "class": "DINOv3ViTModel", "img_size": 112, "patch_size": 16,
           "num_register_tokens": 4, "rope_base": 100.0, "norm_eps": 1e-5}  # fmt: skip
    return fixture(model, imgs, lambda m, x: m(pixel_values=x).last_hidden_state, 5, cfg)


def main() -> int:
    made = {"hf_dinov2": dinov2(0), "hf_dinov2_reg": dinov2(4), "hf_vitmae": vitmae(), "hf_dinov3": dinov3()}
    for name, fx in made.items():
        path = save_fixture(name, fx)
        print(f"{name}: {path} ({path.stat().st_size / 1024:.0f} KiB), sizes {sorted(fx['tokens'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
