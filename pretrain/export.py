"""Exported backbone checkpoints (docs/method.md §6): the teacher backbone, field included, plus metadata.

Layout of ``backbone.pth``::

    {"format": "ssl-vit-toolkit/backbone", "version": 1,
     "model": {<VisionTransformer state_dict: timm-style names, pos_field.field, cls_pos_embed, ...>},
     "meta": {"arch": {<ViTConfig fields>}, "mean": [...], "std": [...], "config_hash": str | None,
              "iteration": int | None, "method": str | None (the pretraining method, pretrain/methods/),
              "positions": {"kind": ...} (docs/positions.md)}}

Positions (docs/positions.md): a field model keeps its field (``pos_field.field``); a ``crop_sincos`` model is
materialised like the field, over the whole virtual image at the export grid ``img_size / patch``, as an ordinary
``pos_embed`` (CLS slot first, ``arch`` rewritten to a plain ``pos_embed`` ViT); a RoPE model exports as RoPE
(``positions`` records the rule, base, coordinate convention and that prefix tokens are unrotated).

The converters in ``transfer/convert`` read this format.
"""

from __future__ import annotations

import os

import torch

from .data.normalization import IMAGENET_MEAN, IMAGENET_STD
from .io import atomic_torch_save
from .models.vit import VisionTransformer, ViTConfig, build_vit

FORMAT = "ssl-vit-toolkit/backbone"
VERSION = 1


def export_backbone(
    backbone: VisionTransformer,
    path: str | os.PathLike,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    config_hash: str | None = None,
    iteration: int | None = None,
    method: str | None = None,
) -> dict:
    """Write ``backbone`` (usually the EMA teacher's) with its metadata, atomically. Returns the saved dict."""
    state, arch, positions = exportable(backbone)
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "model": state,
        "meta": {
            "arch": arch,
            "positions": positions,
            "mean": list(mean),
            "std": list(std),
            "config_hash": config_hash,
            "iteration": iteration,
            "method": method,
        },
    }
    atomic_torch_save(obj, path)
    return obj


def exportable(backbone: VisionTransformer) -> tuple[dict, dict, dict]:
    """``(state dict, arch, positions)`` to export: float32 CPU copies, ``crop_sincos`` materialised (module doc)."""
    state = {k: v.detach().float().cpu().clone() for k, v in backbone.state_dict().items()}
    arch = backbone.meta()
    if arch["rope"]:
        positions = {
            "kind": "rope",
            "rule": arch["rope_rule"],
            "base": float(arch["rope_base"]),
            "coords": arch["rope_coords"],
            "layout": "pairs (2t, 2t+1); first head_dim/4 pairs by row, last head_dim/4 by column",
            "prefix_tokens": "unrotated",
        }
    elif arch["pos_field"]:
        positions = {"kind": "field", "size": list(arch["pos_field_size"])}
    elif arch["pos_embed_type"] == "crop_sincos":
        n = arch["img_size"] // arch["patch_size"]
        with torch.no_grad():
            patch = backbone.patch_pos_embed(1, (n, n)).float().cpu()
        state["pos_embed"] = torch.cat([state.pop("cls_pos_embed"), patch], dim=1)
        arch.update(pos_embed_type="learned", pos_embed_interpolation="size")
        positions = {"kind": "crop_sincos", "extent": list(arch["pos_field_size"]), "materialised_grid": [n, n]}
    else:
        positions = {"kind": arch["pos_embed_type"]}
    return state, arch, positions


def is_backbone_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_backbone(path_or_obj, map_location="cpu") -> tuple[VisionTransformer, dict]:
    """Rebuild the backbone from an exported checkpoint (a path or the loaded dict); strict key matching."""
    obj = path_or_obj
    if not isinstance(obj, dict):
        obj = torch.load(path_or_obj, map_location=map_location, weights_only=True)
    if not is_backbone_checkpoint(obj):
        raise ValueError(f"not an exported backbone checkpoint (format != {FORMAT!r})")
    if obj.get("version", 0) > VERSION:
        raise ValueError(f"backbone checkpoint version {obj['version']} is newer than this code ({VERSION})")
    model = build_vit(ViTConfig(**obj["meta"]["arch"]))
    model.load_state_dict(obj["model"], strict=True)
    return model, obj["meta"]
