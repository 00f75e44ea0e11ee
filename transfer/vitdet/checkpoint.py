"""Loading converted backbones into ViTDet: architecture from the checkpoint, and loud key checks.

A detectron2-target checkpoint written by ``tools/convert_ckpt.py`` is ``{"model": {...}, "meta": {...}}`` with
explicit ``backbone.net.*`` keys (``patch_embed.proj``, ``pos_embed`` at the target grid, ``blocks.{i}.*``,
optionally ``cls_token`` / ``reg_token``) and ``meta`` = ``{"embed_dim", "depth", "num_heads", "patch_size",
"grid", "num_register_tokens", "cls_token_kept", ...}``.

* :func:`read_backbone_arch` derives the backbone's constructor arguments from the weights themselves
  (width, depth, MLP ratio, qkv bias, patch size, grid, tokens) and takes ``num_heads`` (invisible in the weights)
  from ``meta``;
  where ``meta`` is present it must agree with the weights.
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
import math
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer

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
BACKBONE_PREFIX = "backbone.net."

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
    no ``meta["num_heads"]``. Raises ``ValueError`` / ``KeyError`` naming the key when the file is not such a
    checkpoint or its ``meta`` contradicts its weights.
    """
    sd, meta = _state_dict_and_meta(load_checkpoint_file(path))
    P = BACKBONE_PREFIX
    key = P + "patch_embed.proj.weight"
    if key not in sd:
        some = ", ".join(list(sd)[:5])
        raise KeyError(
            f"{path}: no {key!r} (first keys: {some}). Not a detectron2-target checkpoint with explicit "
            "backbone.net.* keys: convert it with tools/convert_ckpt.py (detectron2 target)."
        )
    w = sd[key]
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"{path}: {key} has shape {tuple(w.shape)}; expected (D, 3, p, p)")
    embed_dim, patch_size = int(w.shape[0]), int(w.shape[-1])
    block_ids = {int(m.group(1)) for k in sd for m in [re.match(re.escape(P) + r"blocks\.(\d+)\.", k)] if m}
    if not block_ids:
        raise KeyError(f"{path}: no {P}blocks.* keys")
    depth = max(block_ids) + 1
    if sorted(block_ids) != list(range(depth)):
        raise KeyError(f"{path}: blocks {sorted(set(range(depth)) - block_ids)} missing (depth {depth})")
    pos_key = P + "pos_embed"
    if pos_key not in sd:
        raise KeyError(f"{path}: no {pos_key!r}; ViTDet needs absolute position embeddings at the target grid")
    num_pos = int(sd[pos_key].shape[1])
    meta_grid = meta.get("grid")
    if meta_grid is not None:
        gh, gw = (int(g) for g in meta_grid)
        if num_pos - gh * gw not in (0, 1):
            raise ValueError(f"{path}: meta grid {gh}x{gw} does not fit {pos_key} of shape {tuple(sd[pos_key].shape)}")
    else:
        g = math.isqrt(num_pos - 1)
        gh = gw = g if g * g == num_pos - 1 else math.isqrt(num_pos)
    if gh != gw:
        raise ValueError(f"{path}: position grid {gh}x{gw} is not square; detectron2's ViT needs a square grid")
    if num_pos == gh * gw + 1:
        pretrain_use_cls_token = True
    elif num_pos == gh * gw:
        pretrain_use_cls_token = False
    else:
        raise ValueError(f"{path}: {pos_key} has {num_pos} positions, not a square grid (+1 CLS slot)")
    fc1 = sd.get(P + "blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise KeyError(f"{path}: no {P}blocks.0.mlp.fc1.weight")
    mlp_ratio = int(fc1.shape[0]) / embed_dim
    if mlp_ratio == int(mlp_ratio):
        mlp_ratio = int(mlp_ratio)
    qkv_bias = P + "blocks.0.attn.qkv.bias" in sd
    use_cls_token = P + "cls_token" in sd
    reg = sd.get(P + "reg_token")
    num_register_tokens = int(reg.shape[1]) if reg is not None else 0
    arch = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": int(meta["num_heads"]) if meta.get("num_heads") is not None else None,
        "patch_size": patch_size,
        "pretrain_img_size": gh * patch_size,
        "pretrain_use_cls_token": pretrain_use_cls_token,
        "use_cls_token": use_cls_token,
        "num_register_tokens": num_register_tokens,
        "mlp_ratio": mlp_ratio,
        "qkv_bias": qkv_bias,
        "grid": [gh, gw],
    }
    # meta must agree with the weights (a disagreement means a broken converter or a hand-edited file)
    checks = {
        "embed_dim": embed_dim,
        "depth": depth,
        "patch_size": patch_size,
        "mlp_ratio": mlp_ratio,
        "cls_token_kept": use_cls_token,
        "num_register_tokens": num_register_tokens,
    }
    bad = [f"meta {k}={meta[k]!r} but weights say {v!r}" for k, v in checks.items() if k in meta and meta[k] != v]
    if bad:
        raise ValueError(f"{path}: metadata contradicts the weights: " + "; ".join(bad))
    eps = meta.get("norm_eps")
    if eps is not None and not math.isclose(float(eps), 1e-6, rel_tol=1e-3):
        logger.warning("%s: meta norm_eps=%s but the ViTDet configs use LayerNorm(eps=1e-6)", path, eps)
    if use_cls_token and not pretrain_use_cls_token:
        raise ValueError(f"{path}: has {P}cls_token but {pos_key} has no CLS slot")
    return arch


def apply_backbone_arch(cfg, arch: dict) -> None:
    """Write the checkpoint's architecture into ``cfg.model.backbone.net`` (``num_heads`` only if known)."""
    net = cfg.model.backbone.net
    for k in ARCH_KEYS:
        if arch.get(k) is not None:
            net[k] = arch[k]


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
        if self.meta is not None:
            kwargs.setdefault("meta", self.meta)
        super().save(name, **kwargs)

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
        if missing or unexpected or shapes:
            parts = []
            if shapes:
                parts.append(f"wrong shape: {_listing(shapes)}")
            if missing:
                parts.append(f"missing in checkpoint: {_listing(missing)}")
            if unexpected:
                parts.append(f"not in the model: {_listing(unexpected)}")
            raise CheckpointMismatchError(
                f"checkpoint does not match the model (strict={self.strict!r}): " + "; ".join(parts)
            )
        return incompatible
