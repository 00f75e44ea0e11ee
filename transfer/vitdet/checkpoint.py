"""Loading converted backbones into ViTDet: architecture from the checkpoint, and loud key checks.

A detectron2-target checkpoint written by ``tools/convert_ckpt.py`` is ``{"model": {...}, "meta": {...}}`` with
explicit ``backbone.net.*`` keys (``patch_embed.proj``, ``pos_embed`` at the target grid, ``blocks.{i}.*``,
optionally ``cls_token`` / ``reg_token``) and ``meta`` = ``{"embed_dim", "depth", "num_heads", "patch_size",
"grid", "num_register_tokens", "cls_token_kept", ...}``.

* :func:`read_backbone_arch` derives the backbone's constructor arguments from the weights themselves
  (width, depth, MLP ratio, qkv bias, patch size, grid, tokens) and takes ``num_heads`` (invisible in the weights)
  from ``meta``, through the converter's :func:`transfer.convert.metadata.read_architecture`; where ``meta`` is
  present it must agree with the weights.
* :func:`apply_backbone_arch` / :func:`check_backbone_arch` put them into a LazyConfig and refuse a config whose
  architecture (after the user's ``key=value`` overrides) differs from the checkpoint.
* :class:`StrictDetectionCheckpointer` is detectron2's checkpointer that raises
  :class:`CheckpointMismatchError`, naming the keys, when a load leaves keys missing, unexpected or of the wrong
  shape (``strict="backbone"``: missing keys only count under ``backbone.net.``, as for an initialisation from a
  pretrained backbone; ``strict="all"``: every key, as for evaluation or resuming). detectron2 would only warn.
  It also stores the backbone architecture (:func:`backbone_meta`) as ``"meta"`` in every checkpoint it saves, so a
  trained model's file describes itself like a converted one.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from pretrain.io import atomic_torch_save
from transfer.checkpoint_compat import labelled_problems
from transfer.convert.metadata import read_architecture
from transfer.convert.writers import D2_KEY_PREFIX

__all__ = [
    "BACKBONE_PREFIX",
    "ARCH_KEYS",
    "CheckpointMismatchError",
    "load_checkpoint_file",
    "read_backbone_arch",
    "apply_backbone_arch",
    "check_backbone_arch",
    "StrictDetectionCheckpointer",
    "backbone_meta",
]

logger = logging.getLogger(__name__)

#: Where the ViT's parameters live in the detectron2 model (``model.backbone.net``).
BACKBONE_PREFIX = D2_KEY_PREFIX

#: ``SDPAViT`` arguments that a checkpoint determines.
ARCH_KEYS = (
    "embed_dim",
    "depth",
    "num_heads",
    "patch_size",
    "pretrain_img_size",
    "pretrain_use_cls_token",
    "use_cls_token",
    "num_register_tokens",
    "mlp_ratio",
    "qkv_bias",
    "use_abs_pos",
    "use_rope",
    "rope_base",
    "rope_rule",
    "rope_coords",
)

_MAX_LISTED = 25


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes do not match the model (nothing is silently dropped)."""


def load_checkpoint_file(path: str) -> dict:
    """``torch.load`` a checkpoint on CPU with ``weights_only=True`` (memory-mapped when possible)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _state_dict_and_meta(ckpt) -> tuple[dict, dict]:
    if not isinstance(ckpt, dict):
        raise TypeError(f"expected a dict checkpoint, got {type(ckpt).__name__}")
    if isinstance(ckpt.get("model"), dict):
        return ckpt["model"], dict(ckpt.get("meta") or {})
    return ckpt, {}


def read_backbone_arch(path: str) -> dict:
    """The ``SDPAViT`` arguments of a detectron2-target checkpoint (see the module docstring).

    Returns a dict with :data:`ARCH_KEYS` plus ``grid`` (``[gh, gw]``); ``num_heads`` is ``None`` when the file has
    no ``meta["num_heads"]``. Raises ``KeyError`` when the file has no ``backbone.net.*`` ViT, else
    ``ValueError`` naming the key when its tensors do not form one or its ``meta`` contradicts them.
    """
    sd, meta = _state_dict_and_meta(load_checkpoint_file(path))
    key = BACKBONE_PREFIX + "patch_embed.proj.weight"
    if key not in sd:
        some = ", ".join(list(sd)[:5])
        raise KeyError(
            f"{path}: no {key!r} (first keys: {some}). Not a detectron2-target checkpoint with explicit "
            "backbone.net.* keys: convert it with tools/convert_ckpt.py (detectron2 target)."
        )
    a = read_architecture(sd, meta, "detectron2", where=path)
    gh, gw = a.grid
    if gh != gw:
        raise ValueError(f"{path}: position grid {gh}x{gw} is not square; detectron2's ViT needs a square grid")
    if a.cls_token and not a.cls_slot and not a.rope:
        raise ValueError(f"{path}: has {BACKBONE_PREFIX}cls_token but {BACKBONE_PREFIX}pos_embed has no CLS slot")
    return {
        "embed_dim": a.embed_dim,
        "depth": a.depth,
        "num_heads": a.num_heads,
        "patch_size": a.patch_size,
        "pretrain_img_size": gh * a.patch_size,
        "pretrain_use_cls_token": a.cls_slot,
        "use_cls_token": a.cls_token,
        "num_register_tokens": a.num_register_tokens,
        "mlp_ratio": a.mlp_ratio,
        "qkv_bias": a.qkv_bias,
        "grid": [gh, gw],
        **({"norm_eps": a.norm_eps} if a.norm_eps is not None else {}),  # else the config's LayerNorm stays
        **_rope_args(a.rope),
    }


def _rope_args(rope: dict | None) -> dict:
    """``SDPAViT``'s position arguments for 2-D RoPE as ``meta["rope"]`` records it (none for a ``pos_embed`` file:
    the configs' defaults, an absolute ``pos_embed``)."""
    if not rope:
        return {}
    return {
        "use_abs_pos": False,
        "use_rope": True,
        "rope_base": float(rope["base"]),
        "rope_rule": str(rope["rule"]),
        "rope_coords": str(rope["coords"]),
    }


def apply_backbone_arch(cfg, arch: dict) -> None:
    """Write the checkpoint's architecture into ``cfg.model.backbone.net`` (``num_heads`` only if known)."""
    net = cfg.model.backbone.net
    for k in ARCH_KEYS:
        if arch.get(k) is not None:
            net[k] = arch[k]
    if arch.get("norm_eps") is not None:  # e.g. DINOv3's 1e-5 where the configs default to 1e-6
        net.norm_layer = partial(nn.LayerNorm, eps=float(arch["norm_eps"]))


def check_backbone_arch(cfg, arch: dict, source: str = "the init checkpoint") -> None:
    """Raise ``ValueError`` if ``cfg.model.backbone.net`` differs from ``arch`` (e.g. after a key=value override)."""
    net = cfg.model.backbone.net
    bad = [
        f"model.backbone.net.{k}={net.get(k)!r} but {source} has {arch[k]!r}"
        for k in ARCH_KEYS
        if arch.get(k) is not None and net.get(k) != arch[k]
    ]
    if bad:
        raise ValueError(
            "the backbone configuration does not match the checkpoint: "
            + "; ".join(bad)
            + ". The architecture is read from the checkpoint; drop the conflicting overrides (or convert the "
            "checkpoint with the options you want, e.g. with/without --keep-tokens)."
        )
    if arch.get("num_heads") is None:
        logger.warning("%s has no meta['num_heads']; using the config's num_heads=%s", source, net.get("num_heads"))
    if net.embed_dim % net.num_heads:
        raise ValueError(f"embed_dim={net.embed_dim} is not divisible by num_heads={net.num_heads}")


def backbone_meta(cfg, **extra) -> dict:
    """``meta`` for checkpoints written by training: the backbone architecture of ``cfg`` (plain Python types)."""
    net = cfg.model.backbone.net
    g = int(net.pretrain_img_size) // int(net.patch_size)
    meta = {
        "embed_dim": int(net.embed_dim),
        "depth": int(net.depth),
        "num_heads": int(net.num_heads),
        "patch_size": int(net.patch_size),
        "mlp_ratio": net.get("mlp_ratio", 4),
        "grid": [g, g],
        "pretrain_img_size": int(net.pretrain_img_size),
        "pretrain_use_cls_token": bool(net.get("pretrain_use_cls_token", True)),
        "cls_token_kept": bool(net.get("use_cls_token", False)),
        "num_register_tokens": int(net.get("num_register_tokens", 0)),
        "target": "detectron2-vitdet-model",
    }
    if net.get("use_rope", False):
        meta["rope"] = {
            "base": float(net.get("rope_base", 10000.0)),
            "rule": str(net.get("rope_rule", "axial")),
            "coords": str(net.get("rope_coords", "grid")),
        }
    meta.update(extra)
    return meta


def _listing(items) -> str:
    items = list(items)
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(str(x) for x in items[:_MAX_LISTED]) + more


class StrictDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that fails loudly on incompatible keys instead of logging a warning.

    Set :attr:`strict` before a load: ``"backbone"`` (missing keys count only under ``backbone.net.``;
    unexpected keys and shape mismatches always count), ``"all"`` (every key) or ``None`` (detectron2's
    behaviour). ``backbone.net.`` keys that the model does not have (e.g. a kept ``cls_token`` with
    ``use_cls_token=False``) are errors in both strict modes.
    """

    def __init__(self, *args, strict: str | None = "all", meta: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.strict = strict
        #: Saved as ``"meta"`` in every checkpoint (the backbone architecture, see :func:`backbone_meta`), so that
        #: evaluation and resuming can rebuild the model (``num_heads`` is not visible in the weights).
        self.meta = meta

    def save(self, name: str, **kwargs) -> None:
        """detectron2's ``save`` (model, checkpointables, ``kwargs``, then the ``last_checkpoint`` tag), written to
        a temporary file and renamed, so that a kill during the write never leaves a partial ``<name>.pth``."""
        if not self.save_dir or not self.save_to_disk:
            return
        if self.meta is not None:
            kwargs.setdefault("meta", self.meta)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(f"{name}.pth")

    def _load_model(self, checkpoint):
        if self.strict not in (None, "backbone", "all"):
            raise ValueError(f"strict must be None, 'backbone' or 'all', got {self.strict!r}")
        incompatible = super()._load_model(checkpoint)
        if self.strict is None or incompatible is None:
            return incompatible
        missing = list(incompatible.missing_keys)
        if self.strict == "backbone":
            missing = [k for k in missing if k.startswith(BACKBONE_PREFIX)]
        # detectron2 ignores these cached anchors itself
        missing = [k for k in missing if "anchor_generator.cell_anchors" not in k]
        unexpected = list(incompatible.unexpected_keys)
        shapes = [f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in incompatible.incorrect_shapes]
        parts = labelled_problems(
            [("wrong shape", shapes), ("missing in checkpoint", missing), ("not in the model", unexpected)], _listing
        )
        if parts:
            raise CheckpointMismatchError(
                f"checkpoint does not match the model (strict={self.strict!r}): " + "; ".join(parts)
            )
        return incompatible
