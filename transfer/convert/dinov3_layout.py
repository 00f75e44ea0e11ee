"""DINOv3 ViT checkpoints (official ``.pth`` and timm's ``vit_*_patch16_dinov3``) -> timm-style keys + RoPE settings.

What the official model does with these tensors (docs/protocols.md §1, "DINOv3"):

- tokens ``[CLS, 4 storage tokens, patches]``; no additive position embedding: every attention rotates q and k of
  the patch tokens with 2-D RoPE (periods ``base ** (2t / (D_head / 2))``, base 100, patch centres normalised to
  ``[-1, 1]`` per axis, no coordinate augmentation in eval mode); CLS and storage tokens are not rotated;
- RoPE in the *rotate-half* layout (channel ``j`` pairs with ``j + D_head/2``); the reader reorders q and k so
  that our interleaved RoPE computes the same attention (:func:`~.canonical.permute_qk_heads`, exact);
- ``qkv`` with a *masked k bias* (``attn.qkv.bias * attn.qkv.bias_mask``: the k third of the bias is zeroed at
  run time), folded here; timm's layout stores ``attn.q_bias`` / ``attn.v_bias`` only (k bias zero);
- LayerScale (``ls1/ls2.gamma``; timm ``gamma_1/gamma_2``), LayerNorm eps 1e-5 (``layernormbf16``);
- ``mask_token`` (training only) and ``rope_embed.periods`` (recomputed from the base, checked) are dropped;
  ``cls_norm`` / ``local_cls_norm`` only touch the CLS token and are dropped with a note.
"""

from __future__ import annotations

import math
import re

import torch

from .canonical import ConversionError

DINOV3_NORM_EPS = 1e-5
DINOV3_ROPE_BASE = 100.0
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def is_dinov3(keys: set) -> bool:
    """Official DINOv3 keys, or timm's DINOv3 (``reg_token`` + ``gamma_1`` + no ``pos_embed``)."""
    if keys & {"storage_tokens", "rope_embed.periods"} or any(k.endswith(".attn.qkv.bias_mask") for k in keys):
        return True
    return "reg_token" in keys and "pos_embed" not in keys and any(k.endswith(".gamma_1") for k in keys)


def _qkv_bias(state: dict, i: int, notes: list) -> torch.Tensor | None:
    """Block ``i``'s effective qkv bias: official masked bias folded, or timm's q/v biases with a zero k bias."""
    pre = f"blocks.{i}.attn."
    if pre + "qkv.bias" in state:
        bias = state.pop(pre + "qkv.bias").clone()
        mask = state.pop(pre + "qkv.bias_mask", None)
        if mask is not None:
            bias = bias * mask.to(bias.dtype)
            if i == 0:
                notes.append("masked k bias folded: qkv.bias * qkv.bias_mask (exact)")
        return bias
    q, v = state.pop(pre + "q_bias", None), state.pop(pre + "v_bias", None)
    if q is None and v is None:
        return None
    if q is None or v is None:
        raise ConversionError(f"block {i} has only one of 'attn.q_bias' / 'attn.v_bias'")
    if i == 0:
        notes.append("timm q_bias/v_bias joined into one qkv bias with a zero k bias (exact)")
    return torch.cat([q, torch.zeros_like(q), v])


def rope_base_from_periods(periods: torch.Tensor, head_dim: int) -> float:
    """The base of ``periods = base ** (2t / (head_dim / 2))``; an error for another parametrisation."""
    if periods.numel() != head_dim // 4:
        raise ConversionError(
            f"'rope_embed.periods' has {periods.numel()} entries, expected head_dim/4 = {head_dim // 4}"
        )
    base = float(periods[1]) ** (head_dim / 4) if periods.numel() > 1 else DINOV3_ROPE_BASE
    t = torch.arange(periods.numel(), dtype=torch.float64)
    expect = base ** (2 * t / (head_dim / 2))
    if not torch.allclose(periods.double(), expect, rtol=1e-4):
        raise ConversionError(
            "'rope_embed.periods' do not follow base ** (2t / (D_head/2)) (a min/max-period RoPE?): not supported"
        )
    return float(round(base, 4))


def to_timm_style(state: dict) -> tuple[dict, list, list]:
    """Rename a DINOv3 state dict to the canonical timm-style keys. Returns ``(state, dropped, notes)``;
    ``rope_embed.periods`` stays in ``state`` for :func:`rope_base_from_periods`, under ``_rope_periods``."""
    src, out, dropped, notes = dict(state), {}, [], []
    depth = 1 + max((int(m.group(1)) for k in src if (m := _BLOCK.match(k))), default=-1)
    for i in range(depth):
        bias = _qkv_bias(src, i, notes)
        if bias is not None:
            out[f"blocks.{i}.attn.qkv.bias"] = bias
    for key, t in src.items():
        if key == "rope_embed.periods":
            out["_rope_periods"] = t
        elif key.startswith(("cls_norm.", "local_cls_norm.")):
            dropped.append((key, "CLS-only norm (untied from the patch norm): patch features use 'norm'"))
        elif key == "storage_tokens":
            out["register_tokens"] = t
        else:
            out[re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)] = t
    return out, dropped, notes


def rope_settings(base: float) -> dict:
    """Our RoPE description of DINOv3's (pretrain/models/rope.py, rule ``dinov3``)."""
    if not math.isfinite(base) or base <= 0:
        raise ConversionError(f"invalid RoPE base {base}")
    return {"rule": "dinov3", "base": float(base), "coords": "normalized"}
