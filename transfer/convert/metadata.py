"""Reading a converted checkpoint back: the architecture its tensors show, checked against its ``meta``.

The writers (:mod:`transfer.convert.writers`) save ``{"model" | "state_dict": {...}, "meta": {...}}``; ``meta``
records what the tensors cannot show (``num_heads``, ``norm_eps``, mean/std) next to what they can. The transfer
protocols read their backbone's architecture through :func:`read_architecture`, for ViTDet
(:func:`transfer.vitdet.checkpoint.read_backbone_arch`) and for Segmenter
(:func:`transfer.segmenter.integration.architecture_from_checkpoint`) alike: every field the tensors show is
derived from them, and a ``meta`` entry that contradicts them is an error (a broken converter or a hand-edited
file). A file without ``meta`` (a foreign or hand-made one) gets its grid from the ``pos_embed`` length.

:func:`check_meta_agrees` is the same rule for the architecture our exported backbones record
(``meta["arch"]``, read by :func:`transfer.convert.readers.read_ours`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .canonical import ConversionError
from .writers import D2_KEY_PREFIX, MMSEG_BLOCK_KEYS, int_if_whole


@dataclass(frozen=True)
class KeyLayout:
    """Where one target's state dict keeps the tensors the architecture is read from."""

    patch_embed: str  # "<key>.weight" (D, C, p, p) and "<key>.bias"
    block: str  # prefix of block i's keys, "{i}" for the index
    mlp_fc1: str  # block parameter: the MLP's first weight (hidden, D)
    qkv_bias: str  # block parameter
    pos_embed: str
    cls_slots: tuple[int, ...]  # CLS slots the pos_embed may hold before the grid, in the order tried
    cls_token: str | None = None  # a kept CLS token; None where the target always has one (MMSeg)
    reg_token: str | None = None
    final_norm: str | None = None


LAYOUTS = {
    "detectron2": KeyLayout(
        patch_embed=D2_KEY_PREFIX + "patch_embed.proj",
        block=D2_KEY_PREFIX + "blocks.{i}.",
        mlp_fc1="mlp.fc1.weight",
        qkv_bias="attn.qkv.bias",
        pos_embed=D2_KEY_PREFIX + "pos_embed",
        cls_slots=(1, 0),
        cls_token=D2_KEY_PREFIX + "cls_token",
        reg_token=D2_KEY_PREFIX + "reg_token",
    ),
    "mmseg": KeyLayout(
        patch_embed="patch_embed.projection",
        block="layers.{i}.",
        mlp_fc1=MMSEG_BLOCK_KEYS["mlp.fc1.weight"],
        qkv_bias=MMSEG_BLOCK_KEYS["attn.qkv.bias"],
        pos_embed="pos_embed",
        cls_slots=(1,),  # MMSeg's pos_embed always has the CLS slot
        final_norm="ln1.weight",
    ),
}


@dataclass(frozen=True)
class ConvertedArch:
    """The backbone architecture of a converted checkpoint (target-neutral names)."""

    embed_dim: int
    depth: int
    num_heads: int | None  # meta["num_heads"]; None when the file does not record it
    patch_size: int
    mlp_ratio: int | float  # an int when the hidden size is a whole multiple of embed_dim
    grid: tuple[int, int]
    cls_slot: bool  # pos_embed holds a CLS slot before the grid
    qkv_bias: bool
    patch_bias: bool
    cls_token: bool  # a kept CLS token (detectron2 --keep-tokens)
    num_register_tokens: int
    final_norm: bool
    norm_eps: float | None  # meta["norm_eps"]
    rope: dict | None = None  # meta["rope"]: 2-D RoPE instead of a pos_embed (docs/positions.md)


def check_meta_agrees(meta: Mapping, derived: Mapping, what: str = "meta") -> None:
    """Raise :class:`ConversionError` listing every key of ``derived`` whose ``meta`` value differs."""
    bad = [f"{k}={meta[k]!r} but the weights say {v!r}" for k, v in derived.items() if k in meta and meta[k] != v]
    if bad:
        raise ConversionError(f"{what} contradicts the weights: " + "; ".join(f"{what} {b}" for b in bad))


def read_architecture(state: Mapping[str, torch.Tensor], meta: Mapping, target: str, where: str = "") -> ConvertedArch:
    """The architecture of a converted ``target`` state dict (``"detectron2"`` or ``"mmseg"``), see the module
    docstring. Raises :class:`ConversionError` naming the key (prefixed by ``where``, e.g. the file)."""
    try:
        return _read(state, dict(meta or {}), LAYOUTS[target])
    except ConversionError as e:
        if not where:
            raise
        raise ConversionError(f"{where}: {e}") from None


def _read(state: Mapping[str, torch.Tensor], meta: dict, lay: KeyLayout) -> ConvertedArch:
    w = _required(state, lay.patch_embed + ".weight", "the embedding and patch size")
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise ConversionError(
            f"wrong shape for {lay.patch_embed + '.weight'!r}: {tuple(w.shape)}, expected (D, C, p, p)"
        )
    embed_dim, patch_size = int(w.shape[0]), int(w.shape[-1])
    depth = _depth(state, lay.block)
    first = lay.block.format(i=0)
    fc1 = _required(state, first + lay.mlp_fc1, "the MLP ratio")
    grid, cls_slot = _grid(state, meta, lay)
    reg = state.get(lay.reg_token) if lay.reg_token else None
    arch = ConvertedArch(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(meta["num_heads"]) if meta.get("num_heads") is not None else None,
        patch_size=patch_size,
        mlp_ratio=int_if_whole(int(fc1.shape[0]) / embed_dim),
        grid=grid,
        cls_slot=cls_slot,
        qkv_bias=first + lay.qkv_bias in state,
        patch_bias=lay.patch_embed + ".bias" in state,
        cls_token=bool(lay.cls_token) and lay.cls_token in state,
        num_register_tokens=int(reg.shape[1]) if reg is not None else 0,
        final_norm=bool(lay.final_norm) and lay.final_norm in state,
        norm_eps=float(meta["norm_eps"]) if meta.get("norm_eps") is not None else None,
        rope=dict(meta["rope"]) if meta.get("rope") else None,
    )
    derived = {k: getattr(arch, k) for k in ("embed_dim", "depth", "patch_size", "mlp_ratio")}
    if lay.cls_token:
        derived["cls_token_kept"] = arch.cls_token
    if lay.reg_token:
        derived["num_register_tokens"] = arch.num_register_tokens
    check_meta_agrees(meta, derived)
    return arch


def _required(state: Mapping[str, torch.Tensor], key: str, needed_for: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"missing tensor {key!r} (needed to infer {needed_for})")
    return state[key]


def _depth(state: Mapping[str, torch.Tensor], block: str) -> int:
    """Number of blocks; their indices must run from 0 without gaps."""
    pattern = re.compile(re.escape(block).replace(re.escape("{i}"), r"(\d+)"))
    ids = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not ids:
        raise ConversionError(f"no transformer blocks found (no {block.format(i='<i>')!r} keys)")
    depth = max(ids) + 1
    if len(ids) != depth:
        raise ConversionError(f"blocks {sorted(set(range(depth)) - ids)} missing (depth {depth})")
    return depth


def _grid(state: Mapping[str, torch.Tensor], meta: dict, lay: KeyLayout) -> tuple[tuple[int, int], bool]:
    """Patch grid and whether ``pos_embed`` holds a CLS slot: ``meta["grid"]`` checked against the length, else
    the first CLS slot count of the layout that leaves a square grid; a RoPE file (``meta["rope"]``) has no
    ``pos_embed`` and takes its grid from ``meta["grid"]``."""
    if meta.get("rope"):
        if lay.pos_embed in state:
            raise ConversionError(f"meta records RoPE but the file has {lay.pos_embed!r} too")
        if meta.get("grid") is None:
            raise ConversionError("a RoPE checkpoint needs meta['grid'] (it has no pos_embed to read it from)")
        gh, gw = (int(g) for g in meta["grid"])
        return (gh, gw), False
    if lay.pos_embed not in state:
        raise ConversionError(f"missing tensor {lay.pos_embed!r}: the converter writes positions at the target grid")
    shape = tuple(state[lay.pos_embed].shape)
    num_pos = int(shape[1])
    if meta.get("grid") is not None:
        gh, gw = (int(g) for g in meta["grid"])
        if num_pos - gh * gw not in lay.cls_slots:
            raise ConversionError(f"meta grid {gh}x{gw} does not fit {lay.pos_embed!r} of shape {shape}")
        return (gh, gw), num_pos - gh * gw == 1
    for slots in lay.cls_slots:
        side = math.isqrt(max(num_pos - slots, 0))
        if side > 0 and side * side == num_pos - slots:
            return (side, side), slots == 1
    raise ConversionError(
        f"{lay.pos_embed!r} has {num_pos} positions: not a square grid after {list(lay.cls_slots)} CLS slot(s), "
        "and meta has no 'grid'"
    )
