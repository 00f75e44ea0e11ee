"""Exported backbone checkpoints (docs/method.md §6): the teacher backbone, field included, plus metadata.

Layout of ``backbone.pth``::

    {"format": "ssl-vit-toolkit/backbone", "version": 1,
     "model": {<VisionTransformer state_dict: timm-style names, pos_field.field, cls_pos_embed, ...>},
     "meta": {"arch": {<ViTConfig fields>}, "mean": [...], "std": [...], "config_hash": str | None,
              "iteration": int | None, "method": str | None (the pretraining method, pretrain/methods/)}}

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
    state = {k: v.detach().float().cpu().clone() for k, v in backbone.state_dict().items()}
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "model": state,
        "meta": {
            "arch": backbone.meta(),
            "mean": list(mean),
            "std": list(std),
            "config_hash": config_hash,
            "iteration": iteration,
            "method": method,
        },
    }
    atomic_torch_save(obj, path)
    return obj


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
