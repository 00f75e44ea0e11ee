"""Source readers: a checkpoint file -> :class:`~transfer.convert.canonical.CanonicalViT` (LayerScale not folded yet).

Formats (``--src-format``):

- ``ours``: an exported backbone (``{"format": "ssl-vit-toolkit/backbone", "model", "meta"}``, see
  ``pretrain/export.py``), or a training checkpoint: its EMA teacher (``teacher.backbone.*`` keys, flat in
  ``model`` as ``pretrain/engine/checkpoint.py`` writes them, or a nested ``teacher`` dict), with the architecture
  taken from the resolved config the checkpoint embeds, else inferred from the shapes. Keys: ``pos_field.field``
  + ``cls_pos_embed`` (field on) or ``pos_embed`` with a CLS slot (field off), ``reg_token``,
  ``mask_token``/``posmask_token`` (dropped).
- ``dinov2``: official DINOv2 / DINOv2-reg weights (hub ``state_dict`` or a training ``teacher`` checkpoint):
  ``blocks.<chunk>.<i>.`` keys when ``block_chunks > 0`` (flattened: chunks are padded with Identity, so ``<i>``
  is already the global index), ``register_tokens``, ``ls1.gamma``/``ls2.gamma``, ``mask_token`` ``(1, D)``,
  patch 14 (resampled to ``--patch-size`` later).
- ``timm``: a timm ``VisionTransformer`` state dict (``reg_token``; ``pos_embed`` with or without prefix slots,
  i.e. ``no_embed_class``; LayerScale ``ls*.gamma``; ``head``/``fc_norm`` dropped).
- ``dinov3``: official DINOv3 ViTs (``storage_tokens``, ``rope_embed.periods``, masked k bias, LayerScale) and
  timm's ``vit_*_patch16_dinov3`` layout (``reg_token``, ``gamma_1/2``, ``q_bias``/``v_bias``), read by
  :mod:`.dinov3_layout` into a RoPE model (rule ``dinov3``, normalised coordinates, q/k in our pair layout).
- ``mae``: MAE / iBOT / DINO research releases: timm-style keys inside a ``model``/``teacher``/``state_dict``/
  ``student`` wrapper (teacher preferred) with ``module.``/``backbone.``/``encoder.`` prefixes; heads, decoders
  and mask tokens are dropped; a global-pool MAE that has ``fc_norm`` but no ``norm`` uses ``fc_norm`` as the
  final norm.

``auto`` detects the format from the keys; an unknown layout is an error listing what was found.

Each reader also records how its source model resizes a stored ``pos_embed`` to another grid
(``pos_interpolation``, pretrain.models.position_field.POS_INTERPOLATION_RULES): DINOv2 ``dinov2`` (offset 0.1)
without registers and ``size_antialias`` with them (the hub models), timm ``size_antialias``, MAE ``size``, ours
what its metadata says; ``--pos-interpolation`` overrides it (e.g. a DINOv2 run trained with other settings).
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field

import torch

from pretrain.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from pretrain.export import FORMAT as OURS_FORMAT

from . import dinov3_layout
from .canonical import (
    BLOCK_PARAMS,
    OPTIONAL_BLOCK_PARAMS,
    ArchInfo,
    CanonicalViT,
    ConversionError,
    infer_depth,
    infer_num_heads,
    permute_qk_heads,
    split_pos_embed,
    validate,
)
from .metadata import check_meta_agrees

FORMATS = ("ours", "dinov2", "dinov3", "timm", "mae")
# preference order: the EMA teacher first; "backbone" for nested {"teacher": {"backbone": {...}, "dino_head": ...}}
WRAPPER_KEYS = ("teacher", "model", "state_dict", "student", "backbone")
PREFIXES = ("module.", "backbone.", "encoder.")

# (regex on the prefix-stripped key, reason) for tensors that are not part of the transferred backbone.
DROP_RULES = (
    (re.compile(r"^(\w*_)?heads?(\.|$)"), "projection/classification head: not part of the backbone"),
    (re.compile(r"^attn_pool\."), "attention-pooling head: not part of the backbone"),
    (re.compile(r"^decoder[._]"), "MAE decoder: not part of the backbone"),
    (re.compile(r"^mask_token$"), "training-only [MASK] token"),
    (re.compile(r"^posmask_token$"), "training-only [POSMASK] token"),
    (re.compile(r"^masked_embed$"), "training-only mask embedding (iBOT)"),
)
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass
class ReadOptions:
    """User overrides for what the weights cannot tell."""

    src_format: str = "auto"
    num_heads: int | None = None
    norm_eps: float | None = None
    unsafe_load: bool = False
    pos_interpolation: str = "auto"  # auto (the source's own rule) or a POS_INTERPOLATION_RULES name
    given_by: str = ""  # who set num_heads / pos_interpolation when not the flags (for the notes), e.g. a config


@dataclass
class Unwrapped:
    """A source state dict after removing wrappers and prefixes, plus where it came from."""

    state: dict
    wrappers: list = field(default_factory=list)
    prefixes: set = field(default_factory=set)
    meta: dict | None = None
    exported: bool = False
    ignored: list = field(default_factory=list)  # (key, reason) for non-tensor entries


# ----------------------------------------------------------------------------------------------------------------
# loading and unwrapping


def load_file(path: str, unsafe_load: bool = False):
    """``torch.load`` with ``weights_only=True``; only with ``unsafe_load`` retry with full unpickling."""
    if not os.path.isfile(path):
        raise ConversionError(f"source file not found: {path}")
    try:
        from transfer.checkpoint_compat import allow_framework_checkpoint_globals

        allow_framework_checkpoint_globals()  # numpy scalars/arrays in some releases are harmless
    except Exception:  # pragma: no cover - numpy/mmengine oddities must not block loading
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if not re.search(r"GLOBAL|Unsupported global|safe_globals", msg):
            reason = re.search(r"WeightsUnpickler error:\s*(.+?)\n", msg + "\n", re.S)
            reason = reason.group(1).strip() if reason else msg.splitlines()[0][:200]
            raise ConversionError(f"not a PyTorch checkpoint: {path} (unpickling failed: {reason})") from None
        if not unsafe_load:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            what = f" (found {found.group(1)})" if found else ""
            raise ConversionError(
                f"{path} contains non-tensor Python objects{what}, e.g. an argparse Namespace as in old DINO/iBOT "
                "checkpoints, which torch.load(weights_only=True) refuses. Re-run with --unsafe-load only if you "
                "trust the file (full unpickling can execute code)."
            ) from None
    except Exception as e:  # zip/format errors, truncated files, random bytes
        raise ConversionError(f"not a PyTorch checkpoint: {path} ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConversionError(f"cannot load {path} even with --unsafe-load: {type(e).__name__}: {e}") from None


def _describe(obj) -> str:
    if isinstance(obj, dict):
        items = [f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:12]]
        more = f", ... ({len(obj)} entries)" if len(obj) > 12 else ""
        return "{" + ", ".join(items) + more + "}"
    return type(obj).__name__


def unwrap(obj) -> Unwrapped:
    """Find the backbone state dict inside a checkpoint object and strip ``module.``/``backbone.``/``encoder.``."""
    if not isinstance(obj, dict):
        raise ConversionError(f"unknown checkpoint layout: top-level object is a {type(obj).__name__}, not a dict")
    if obj.get("format") == OURS_FORMAT:
        if not isinstance(obj.get("model"), dict):
            raise ConversionError("exported backbone checkpoint without a 'model' state dict")
        return Unwrapped(state=dict(obj["model"]), meta=obj.get("meta") or {}, exported=True)
    wrappers, cur = [], obj
    for _ in range(3):
        if any(isinstance(v, torch.Tensor) for v in cur.values()):
            break
        key = next((k for k in WRAPPER_KEYS if isinstance(cur.get(k), dict)), None)
        if key is None:
            break
        wrappers.append(key)
        cur = cur[key]
    tensors = {k: v for k, v in cur.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(
            f"unknown checkpoint layout: no tensors found (looked inside {wrappers or 'the top level'}); "
            f"top-level entries: {_describe(obj)}"
        )
    ignored = [(str(k), f"not a tensor ({type(v).__name__})") for k, v in cur.items() if k not in tensors]
    # a self-distillation training state flattened into one dict (ours, DINOv2: "teacher.backbone.*",
    # "student.backbone.*", heads, loss buffers): take the EMA teacher, else the student
    for part in ("teacher", "student"):
        selected = {k[len(part) + 1 :]: v for k, v in tensors.items() if str(k).startswith(part + ".")}
        if selected:
            ignored += [(str(k), f"not part of the {part}") for k in tensors if not str(k).startswith(part + ".")]
            wrappers.append(part)
            tensors = selected
            break
    state, prefixes = {}, set()
    for k, v in tensors.items():
        name, stripped = str(k), ""
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if name.startswith(p):
                    name, stripped, changed = name[len(p) :], stripped + p, True
        if stripped:
            prefixes.add(stripped)
        if name in state:
            raise ConversionError(f"two source keys map to {name!r} after removing prefixes {sorted(PREFIXES)}")
        state[name] = v
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
    if meta is None:
        meta = _meta_from_training_config(obj.get("config"))
    return Unwrapped(state=state, wrappers=wrappers, prefixes=prefixes, meta=meta, ignored=ignored)


def _meta_from_training_config(config) -> dict | None:
    """Backbone metadata of one of our training checkpoints, from the resolved config it embeds (heads, eps and
    field size are not all inferable from the weights); None for anything else."""
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict) and "pos_field" in config):
        return None
    try:
        from dataclasses import asdict

        from omegaconf import OmegaConf

        from pretrain.models.from_config import backbone_config

        arch = asdict(backbone_config(OmegaConf.create(config)))
    except Exception:  # not our config after all: fall back to inferring from the shapes
        return None
    return {"arch": arch, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "from": "training config"}


def detect_format(u: Unwrapped) -> str:
    """Guess the source format from the keys (see the module docstring)."""
    keys = set(u.state)
    if u.exported or keys & {"pos_field.field", "cls_pos_embed", "posmask_token"}:
        return "ours"
    if dinov3_layout.is_dinov3(keys):
        return "dinov3"
    has_ls = any(k.endswith(".ls1.gamma") for k in keys)
    if "register_tokens" in keys or any(_CHUNKED.match(k) for k in keys):
        return "dinov2"
    mt = u.state.get("mask_token")
    if mt is not None and mt.ndim == 2 and has_ls:
        return "dinov2"
    pe = u.state.get("patch_embed.proj.weight")
    if pe is not None and any(k.startswith("blocks.") for k in keys):
        if pe.ndim == 4 and pe.shape[-1] == 14 and has_ls:
            return "dinov2"
        ssl_keys = any(k.startswith(("decoder", "dino_head.", "ibot_head.")) or k == "masked_embed" for k in keys)
        if ssl_keys or u.prefixes or set(u.wrappers) & {"teacher", "student", "model"} or mt is not None:
            return "mae"
        return "timm"
    sample = sorted(keys)[:15]
    raise ConversionError(
        f"unknown checkpoint layout: no ViT keys ('patch_embed.proj.weight' + 'blocks.<i>.*') found; "
        f"wrappers {wrappers_desc(u)}, {len(keys)} tensors, e.g. {sample}"
    )


def wrappers_desc(u: Unwrapped) -> str:
    return "->".join(u.wrappers) if u.wrappers else "none"


# ----------------------------------------------------------------------------------------------------------------
# the shared timm-style mapping


def _map_state(u: Unwrapped, fmt: str) -> tuple[dict, dict, dict, list, list]:
    """Split prefix-stripped keys into block/embedding tensors (canonical names), specials and drops.

    Returns ``(state, specials, origin, dropped, notes)``; unknown keys are an error naming them.
    """
    state, specials, origin, dropped, notes, unknown = {}, {}, {}, [], [], []
    chunked = any(_CHUNKED.match(k) for k in u.state)
    for key, t in u.state.items():
        reason = next((r for rx, r in DROP_RULES if rx.search(key)), None)
        if reason:
            dropped.append((key, reason))
            continue
        if (chunked and (m := _CHUNKED.match(key))) or (not chunked and (m := _BLOCK.match(key))):
            rest = m.group(m.lastindex)
            name = f"blocks.{int(m.group(m.lastindex - 1))}.{rest}"
            if rest not in BLOCK_PARAMS + OPTIONAL_BLOCK_PARAMS:
                unknown.append(key)
                continue
            if name in state:
                raise ConversionError(f"block chunks overlap: {key!r} and {origin[name]!r} both give {name!r}")
        elif key in ("patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"):
            name = key
        elif key in ("cls_token", "pos_embed", "cls_pos_embed", "pos_field.field", "fc_norm.weight", "fc_norm.bias"):
            specials[key] = t
            origin[key] = key
            continue
        elif key in ("reg_token", "register_tokens"):
            specials["reg_token"] = t
            origin["reg_token"] = key
            continue
        else:
            unknown.append(key)
            continue
        state[name] = t
        origin[name] = key
    if unknown:
        hint = ""
        if any(re.search(r"\.mlp\.w(12|1|2|3)\.", k) for k in unknown):
            hint = " (SwiGLU FFN, e.g. DINOv2 ViT-g: detectron2/MMSeg ViTs only have a GELU MLP)"
        elif chunked and any(_BLOCK.match(k) and not _CHUNKED.match(k) for k in unknown):
            hint = " (mixed chunked 'blocks.<chunk>.<i>.' and flat 'blocks.<i>.' keys)"
        raise ConversionError(
            f"unknown key(s) in the {fmt} source (not part of a plain ViT backbone this converter can map): "
            f"{sorted(unknown)[:12]}{' ...' if len(unknown) > 12 else ''}{hint}"
        )
    if chunked:
        notes.append("block_chunks layout 'blocks.<chunk>.<i>.' flattened to 'blocks.<i>.'")
    # final norm: 'norm' preferred; a global-pool MAE only has 'fc_norm'
    fc = {k: specials.pop(k) for k in ("fc_norm.weight", "fc_norm.bias") if k in specials}
    if fc:
        if "norm.weight" in state:
            dropped += [(k, "pooled-feature norm of a classifier (the final 'norm' is used)") for k in sorted(fc)]
        else:
            for k, v in fc.items():
                name = "norm." + k.split(".", 1)[1]
                state[name] = v
                origin[name] = origin.get(k, k)
            notes.append("no 'norm.*' in the source: 'fc_norm.*' (global-pool MAE) used as the final norm")
    return state, specials, origin, dropped, notes


def _arch_from_state(state: dict, opts: ReadOptions, meta_heads=None, meta_eps=None) -> ArchInfo:
    w = state.get("patch_embed.proj.weight")
    if w is None:
        raise ConversionError("missing tensor 'patch_embed.proj.weight' (needed to infer the embedding size)")
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise ConversionError(f"wrong shape for 'patch_embed.proj.weight': {tuple(w.shape)}, expected (D, C, p, p)")
    d, c, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    depth = infer_depth(state)
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise ConversionError("missing tensor 'blocks.0.mlp.fc1.weight' (needed to infer the MLP ratio)")
    heads, how = infer_num_heads(d, meta_heads, opts.num_heads)
    eps = opts.norm_eps if opts.norm_eps is not None else (meta_eps if meta_eps is not None else 1e-6)
    return ArchInfo(
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        patch_size=p,
        mlp_ratio=float(fc1.shape[0]) / d,
        qkv_bias=any(k.endswith(".attn.qkv.bias") for k in state),
        norm_eps=float(eps),
        in_chans=c,
        num_heads_source=how,
    )


def _positions(c: CanonicalViT, specials: dict, fmt: str) -> None:
    """Fill ``cls_token``, ``cls_pos``, ``reg_token`` and the patch position source from the special tensors."""
    c.cls_token = specials.get("cls_token")
    c.reg_token = specials.get("reg_token")
    if c.reg_token is not None and c.reg_token.ndim == 2:  # (R, D) -> (1, R, D)
        c.reg_token = c.reg_token[None]
    r = c.num_registers
    if c.reg_token is not None and (c.reg_token.ndim != 3 or c.reg_token.shape[-1] != c.arch.embed_dim):
        raise ConversionError(
            f"wrong shape for {c.src('reg_token')!r}: got {tuple(c.reg_token.shape)}, "
            f"expected (1, R, {c.arch.embed_dim})"
        )
    if "pos_field.field" in specials:
        c.pos_field = specials["pos_field.field"]
        c.origin["pos_field"] = "pos_field.field"
        c.cls_pos = specials.get("cls_pos_embed")
        c.origin["cls_pos"] = "cls_pos_embed"
        if c.cls_token is not None and c.cls_pos is None:
            raise ConversionError("missing tensor 'cls_pos_embed' (the CLS position of a position-field model)")
        if "pos_embed" in specials:
            raise ConversionError("both 'pos_field.field' and 'pos_embed' present: ambiguous position source")
        return
    pe = specials.get("pos_embed")
    if pe is None:
        return  # validate() reports the missing position embedding
    c.origin["pos_embed"] = c.origin["pos_grid"] = "pos_embed"
    c.origin["cls_pos"] = "pos_embed[:, 0]"
    has_cls = c.cls_token is not None
    candidates = ([1, 1 + r, 0] if has_cls else [0, r]) if r else ([1, 0] if has_cls else [0])
    if fmt == "ours":
        candidates = [1]  # our field-off model always has the CLS slot
    candidates = list(dict.fromkeys(candidates))
    n_prefix, prefix, (n, m) = split_pos_embed(pe, candidates)
    d = pe.shape[-1]
    c.pos_grid = pe[:, n_prefix:].reshape(1, n, m, d).permute(0, 3, 1, 2).contiguous()
    if has_cls:
        c.cls_pos = prefix[:, :1] if n_prefix >= 1 else None
        if n_prefix == 0:
            c.notes.append("pos_embed has no prefix slots (timm no_embed_class): the CLS token gets no position")
        if n_prefix == 1 + r and r:
            c.reg_token = c.reg_token + prefix[:, 1:]
            c.notes.append(f"register position slots of pos_embed folded into the {r} register tokens (exact)")
    elif n_prefix == r and r:
        c.reg_token = c.reg_token + prefix
        c.notes.append(f"register position slots of pos_embed folded into the {r} register tokens (exact)")


def _build(u: Unwrapped, fmt: str, opts: ReadOptions, meta_heads=None, meta_eps=None, rope=None) -> CanonicalViT:
    state, specials, origin, dropped, notes = _map_state(u, fmt)
    arch = _arch_from_state(state, opts, meta_heads, meta_eps)
    c = CanonicalViT(arch=arch, state=state, source_format=fmt, origin=origin, notes=notes, rope=rope)
    c.source_keys = sorted(u.state)
    c.dropped = dropped + list(u.ignored)
    _positions(c, specials, fmt)
    if c.cls_token is None:
        c.notes.append("the source has no CLS token")
    if not arch.qkv_bias:
        for i in range(arch.depth):
            w = state.get(f"blocks.{i}.attn.qkv.weight")
            if w is not None:
                state[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
        arch.qkv_bias = True
        c.notes.append("the source has no qkv bias: zeros written (exact; detectron2/MMSeg ViTs use qkv_bias=True)")
    c.notes.insert(
        0,
        f"num_heads={arch.num_heads} "
        + {
            "meta": "from the checkpoint metadata",
            "flag": f"from {opts.given_by or '--num-heads'}",
            "table": "from the standard table",
        }[arch.num_heads_source]
        + (" (not inferable from weights; override with --num-heads)" if arch.num_heads_source == "table" else ""),
    )
    validate(c)
    return c


# ----------------------------------------------------------------------------------------------------------------
# one reader per source format


def read_ours(u: Unwrapped, opts: ReadOptions) -> CanonicalViT:
    """Our exported backbone (architecture from ``meta["arch"]``) or a training checkpoint's teacher backbone."""
    if not (u.exported or set(u.state) & {"pos_field.field", "cls_pos_embed", "posmask_token", "pos_embed"}):
        raise ConversionError("not an ssl-vit-toolkit checkpoint: no 'pos_field.field' / 'pos_embed' found")
    meta = u.meta or {}
    arch_meta = meta.get("arch") if isinstance(meta.get("arch"), dict) else None
    c = _build(
        u,
        "ours",
        opts,
        meta_heads=arch_meta.get("num_heads") if arch_meta else None,
        meta_eps=arch_meta.get("norm_eps") if arch_meta else None,
        rope=_rope_of(arch_meta),
    )
    a = c.arch
    if arch_meta:
        check_meta_agrees(arch_meta, {k: getattr(a, k) for k in ("embed_dim", "depth", "patch_size")}, "meta['arch']")
        vit_cfg = dict(arch_meta)
    else:
        vit_cfg = _vit_config_from_shapes(c, u)
        c.notes.append("training checkpoint without metadata: architecture inferred from the tensor shapes")
    if opts.num_heads is not None:
        vit_cfg["num_heads"] = opts.num_heads
    if opts.norm_eps is not None:
        vit_cfg["norm_eps"] = opts.norm_eps
    c.pos_interpolation = str(vit_cfg.get("pos_embed_interpolation", "size"))
    c.mean = list(meta.get("mean") or IMAGENET_MEAN)
    c.std = list(meta.get("std") or IMAGENET_STD)
    backbone_state = {  # what our ViT holds: drop heads, keep the training-only tokens (our model has them)
        k: v
        for k, v in u.state.items()
        if k in ("mask_token", "posmask_token") or not any(rx.search(k) for rx, _ in DROP_RULES)
    }
    c.source_meta = {"vit_config": vit_cfg, "source_state": backbone_state, "meta": meta}
    return c


def _rope_of(arch_meta: dict | None) -> dict | None:
    """The RoPE settings of our ViT's ``meta["arch"]`` (docs/positions.md), None without RoPE."""
    if not arch_meta or not arch_meta.get("rope"):
        return None
    return {
        "rule": str(arch_meta.get("rope_rule", "axial")),
        "base": float(arch_meta.get("rope_base", 10000.0)),
        "coords": str(arch_meta.get("rope_coords", "grid")),
    }


def _vit_config_from_shapes(c: CanonicalViT, u: Unwrapped) -> dict:
    """Our ``ViTConfig`` fields for a training checkpoint without metadata, from what its tensors show."""
    a = c.arch
    vit_cfg = {k: getattr(a, k) for k in ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")}
    vit_cfg.update(
        qkv_bias=any(k.endswith("attn.qkv.bias") for k in u.state),
        layerscale=1e-5 if c.has_layerscale else None,
        num_register_tokens=c.num_registers,
        norm_eps=a.norm_eps,
        pos_field=c.pos_field is not None,
    )
    if c.pos_field is not None:
        vit_cfg["pos_field_size"] = list(c.pos_field.shape[2:])
    else:
        vit_cfg["img_size"] = int(c.pos_grid.shape[2]) * a.patch_size
    return vit_cfg


def _source_rule(c: CanonicalViT, opts: ReadOptions, default: str, why: str) -> None:
    """Set how the source resizes its ``pos_embed`` (the module docstring) and say so in the notes."""
    from pretrain.models.position_field import POS_INTERPOLATIONS

    if c.pos_grid is None:
        return
    rule = default if opts.pos_interpolation == "auto" else opts.pos_interpolation
    if rule not in POS_INTERPOLATIONS:
        raise ConversionError(f"unknown --pos-interpolation {rule!r}; choose auto or one of {POS_INTERPOLATIONS}")
    c.pos_interpolation = rule
    how = f"from {opts.given_by or '--pos-interpolation'}" if opts.pos_interpolation != "auto" else why
    c.notes.append(f"pos_embed resized by the source's rule {rule!r} ({how})")


def _imagenet_reader(fmt: str, note: str, doc: str, rule):
    """A reader for a plain-ViT format whose releases are normalised with ImageNet's mean and std; ``rule(c)`` gives
    the source's own pos_embed resizing rule and why."""

    def read(u: Unwrapped, opts: ReadOptions) -> CanonicalViT:
        c = _build(u, fmt, opts)
        c.mean, c.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        c.notes.append(note)
        _source_rule(c, opts, *rule(c))
        return c

    read.__name__ = read.__qualname__ = f"read_{fmt}"
    read.__doc__ = doc
    return read


def _dinov2_rule(c: CanonicalViT) -> tuple[str, str]:
    if c.num_registers:
        return "size_antialias", "DINOv2 hub register models: interpolate_antialias=True, interpolate_offset=0"
    return "dinov2", "DINOv2 hub models without registers: interpolate_offset=0.1, no antialias"


read_dinov2 = _imagenet_reader(
    "dinov2",
    "mean/std: ImageNet (DINOv2's normalisation)",
    "Official DINOv2 / DINOv2-reg (chunks flattened, ``register_tokens`` -> registers, patch 14 kept here).",
    _dinov2_rule,
)
read_timm = _imagenet_reader(
    "timm",
    "mean/std: assumed ImageNet (timm state dicts do not record them; check the model's config)",
    "A timm ``VisionTransformer`` state dict (``reg_token``, ``no_embed_class``, LayerScale supported).",
    lambda c: ("size_antialias", "timm's resample_abs_pos_embed: by size, antialias"),
)
read_mae = _imagenet_reader(
    "mae",
    "mean/std: ImageNet (MAE/iBOT/DINO normalisation)",
    "MAE / iBOT / DINO releases: timm-style keys behind wrappers and prefixes; heads and decoders dropped.",
    lambda c: ("size", "MAE's interpolate_pos_embed: bicubic by size"),
)


def read_dinov3(u: Unwrapped, opts: ReadOptions) -> CanonicalViT:
    """Official DINOv3 or timm-layout DINOv3 ViT (:mod:`.dinov3_layout`): RoPE, storage tokens, LayerScale."""
    state, dropped, notes = dinov3_layout.to_timm_style(u.state)
    periods = state.pop("_rope_periods", None)
    mapped = Unwrapped(state=state, wrappers=u.wrappers, prefixes=u.prefixes, meta=u.meta, ignored=list(u.ignored))
    eps = dinov3_layout.DINOV3_NORM_EPS
    c = _build(mapped, "dinov3", opts, meta_eps=eps, rope=dinov3_layout.rope_settings(dinov3_layout.DINOV3_ROPE_BASE))
    hd = c.arch.embed_dim // c.arch.num_heads  # divisible, and by 4 under RoPE: _build's validate checked both
    if periods is not None:
        c.rope["base"] = dinov3_layout.rope_base_from_periods(periods, hd)
        c.dropped.append(("rope_embed.periods", f"recomputed from base {c.rope['base']:g} (checked)"))
    for i in range(c.arch.depth):
        w, b = c.state[f"blocks.{i}.attn.qkv.weight"], c.state.get(f"blocks.{i}.attn.qkv.bias")
        c.state[f"blocks.{i}.attn.qkv.weight"], c.state[f"blocks.{i}.attn.qkv.bias"] = permute_qk_heads(
            w, b, c.arch.num_heads
        )
    c.source_keys = sorted(u.state)
    c.dropped += dropped
    c.notes += notes + [
        "q/k channels reordered from DINOv3's rotate-half RoPE layout to our pair layout (exact)",
        f"LayerNorm eps {c.arch.norm_eps:g}" + (" (DINOv3's layernormbf16)" if opts.norm_eps is None else ""),
        "mean/std: ImageNet (DINOv3's LVD-1689M normalisation)",
    ]
    c.mean, c.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    c.source_meta["dinov3"] = {"rope_base": c.rope["base"]}
    return c


READERS = {"ours": read_ours, "dinov2": read_dinov2, "dinov3": read_dinov3, "timm": read_timm, "mae": read_mae}


def read_checkpoint(obj, opts: ReadOptions) -> tuple[CanonicalViT, Unwrapped]:
    """Loaded checkpoint object -> canonical model (validated, LayerScale still separate)."""
    u = unwrap(obj)
    fmt = detect_format(u) if opts.src_format == "auto" else opts.src_format
    if fmt not in READERS:
        raise ConversionError(f"unknown --src-format {fmt!r}; choose auto or one of {FORMATS}")
    c = READERS[fmt](u, opts)
    if u.wrappers:
        c.notes.append(f"state dict taken from the {wrappers_desc(u)!r} entry")
    if u.prefixes:
        c.notes.append(f"key prefixes removed: {sorted(u.prefixes)}")
    return c, u
