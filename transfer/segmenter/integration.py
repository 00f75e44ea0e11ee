"""MMSegmentation glue for the Segmenter linear-decoder protocol (docs/protocols.md §3).

What lives here, and nothing else:

* :func:`setup_mmseg` — once per process: allow-list the framework types that mmengine checkpoints pickle
  (so ``torch.load``'s ``weights_only=True`` default does not break ``resume``), and register mmseg's modules.
* :func:`load_converted_checkpoint` — read a converter-produced MMSeg-target file
  (``{"state_dict": {...MMSeg VisionTransformer keys...}, "meta": {...}}``) and check its format.
* :func:`adapt_config_to_checkpoint` / :func:`check_config_against_checkpoint` — point
  ``model.backbone.init_cfg`` at that file and make the config's backbone agree with it: either **adapt** the
  dimensions to the checkpoint (toy configs) or **check** them and fail on any mismatch (the paper's configs);
  :func:`apply_checkpoint_to_config` picks one by the config's ``adapt_backbone_to_checkpoint``.
* :func:`apply_checkpoint_positions` — the position scheme follows the checkpoint in both modes: a RoPE file
  (``meta["rope"]``, docs/positions.md) selects :class:`transfer.segmenter.rope_vit.RoPEVisionTransformer` (MMSeg's
  ViT with RoPE, registered on import of this module) with the recorded rule, base and coordinates.
* :func:`verify_backbone_loaded` — after ``init_weights``, compare every backbone tensor with the file.
  MMSeg's ``VisionTransformer.init_weights`` loads with ``strict=False`` and silently drops what does not
  match (a renamed key, a ``backbone.`` prefix, the patch bias when ``patch_bias=False``); this function
  turns every such case into a :class:`CheckpointLoadError` that names the keys.
* :class:`VerifyPretrainedBackboneHook` — runs :func:`verify_backbone_loaded` inside MMEngine's ``Runner``
  right before the first training iteration (after weight init, after a possible resume), so the check sees
  the very model that trains. The ADE20K configs list it in ``custom_hooks``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from transfer.checkpoint_compat import allow_framework_checkpoint_globals, labelled_problems
from transfer.convert.canonical import ConversionError
from transfer.convert.metadata import read_architecture

try:  # registers the project's MMSeg backbones (configs import this module through custom_imports)
    from transfer.segmenter import register_vit, rope_vit  # noqa: F401
except ImportError:  # pragma: no cover - mmseg missing: the pure functions below still work
    rope_vit = register_vit = None

_SETUP_DONE = False
#: Backbone types a converted checkpoint can go into: MMSeg's ViT, and the project's with 2-D RoPE or registers.
BACKBONE_TYPES = ("VisionTransformer", "RoPEVisionTransformer", "RegisterVisionTransformer")
_ROPE_ARGS = ("rope_base", "rope_rule", "rope_coords")


class CheckpointLoadError(RuntimeError):
    """The converted checkpoint does not (or did not) load into the configured backbone."""


# ----------------------------------------------------------------------------------------------------------
# process setup
# ----------------------------------------------------------------------------------------------------------
def setup_mmseg() -> None:
    """Allow-list framework checkpoint types for ``torch.load`` and register MMSeg modules. Idempotent."""
    global _SETUP_DONE
    allow_framework_checkpoint_globals()
    if _SETUP_DONE:
        return
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    _SETUP_DONE = True


# ----------------------------------------------------------------------------------------------------------
# reading the converted checkpoint
# ----------------------------------------------------------------------------------------------------------
def load_converted_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a converter-produced MMSeg-target checkpoint and return ``(state_dict, meta)``.

    The file must be ``{"state_dict": {name: tensor}, "meta": {...}}`` with MMSeg ``VisionTransformer`` key
    names. ``meta`` may be empty for foreign files; the dimensions are then derived from tensor shapes.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointLoadError(
            f"{path}: expected a converted MMSeg checkpoint {{'state_dict': ..., 'meta': ...}} "
            f"(tools/convert_ckpt.py --target mmseg), got top-level {keys}"
        )
    state_dict = obj["state_dict"]
    meta = dict(obj.get("meta") or {})
    bad = [k for k, v in state_dict.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointLoadError(f"{path}: non-tensor entries in state_dict: {bad[:10]}")
    if "patch_embed.projection.weight" not in state_dict:
        hint = ""
        if any(k.startswith("backbone.") for k in state_dict):
            hint = " (keys carry a 'backbone.' prefix: the file is not in the converter's MMSeg target format)"
        elif "patch_embed.proj.weight" in state_dict:
            hint = " (timm key names: convert it with tools/convert_ckpt.py --target mmseg)"
        raise CheckpointLoadError(f"{path}: no 'patch_embed.projection.weight' key{hint}")
    return state_dict, meta


#: MMSeg ``VisionTransformer`` argument (or check) -> :class:`~transfer.convert.metadata.ConvertedArch` field.
_MMSEG_ARCH_FIELDS = {
    "embed_dims": "embed_dim",
    "num_layers": "depth",
    "num_heads": "num_heads",
    "patch_size": "patch_size",
    "grid": "grid",
    "mlp_ratio": "mlp_ratio",
    "patch_bias": "patch_bias",
    "final_norm": "final_norm",
}


def architecture_from_checkpoint(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone architecture, from tensor shapes cross-checked against ``meta``
    (:func:`transfer.convert.metadata.read_architecture`).

    Returns ``dict(embed_dims, num_layers, num_heads, patch_size, grid=(gh, gw), mlp_ratio, patch_bias,
    final_norm)``. ``num_heads`` cannot be read from shapes and comes from ``meta["num_heads"]``.
    """
    try:
        a = read_architecture(state_dict, meta, "mmseg")
    except ConversionError as e:
        raise CheckpointLoadError(str(e)) from None
    if not isinstance(a.mlp_ratio, int):
        raise CheckpointLoadError(
            f"MLP hidden size {round(a.mlp_ratio * a.embed_dim)} is not a multiple of embed_dim {a.embed_dim} "
            "(mmseg needs an int mlp_ratio)"
        )
    if a.num_heads is None:
        raise CheckpointLoadError("meta has no 'num_heads' (it cannot be derived from tensor shapes)")
    if a.embed_dim % a.num_heads:
        raise CheckpointLoadError(f"embed_dim {a.embed_dim} is not divisible by num_heads {a.num_heads}")
    return {mmseg_name: getattr(a, field) for mmseg_name, field in _MMSEG_ARCH_FIELDS.items()}


def _norm_to_255(values: Iterable[float]) -> list[float]:
    vals = [float(v) for v in values]
    return [v * 255.0 for v in vals] if max(vals) <= 1.0 else vals


# ----------------------------------------------------------------------------------------------------------
# config surgery
# ----------------------------------------------------------------------------------------------------------
def apply_checkpoint_to_config(cfg, ckpt_path: str) -> dict[str, Any]:
    """Point the config's backbone at ``ckpt_path`` the way the config asks: :func:`adapt_config_to_checkpoint`
    when it sets ``adapt_backbone_to_checkpoint = True`` (the toy configs), else
    :func:`check_config_against_checkpoint` (the paper's configs)."""
    if cfg.get("adapt_backbone_to_checkpoint", False):
        return adapt_config_to_checkpoint(cfg, ckpt_path)
    return check_config_against_checkpoint(cfg, ckpt_path)


def adapt_config_to_checkpoint(cfg, ckpt_path: str) -> dict[str, Any]:
    """Point the backbone at ``ckpt_path`` and take its architecture from the checkpoint.

    Sets the backbone's ``embed_dims``, ``num_layers``, ``num_heads``, ``patch_size``, ``img_size``, ``mlp_ratio``
    and the decode head's ``in_channels``/``channels``, and (when they differ) ``with_cls_token`` and the LN eps
    the converter recorded. Still raises :class:`CheckpointLoadError` when ``patch_bias``/``final_norm`` or the
    normalisation disagree. Returns the architecture dict of :func:`architecture_from_checkpoint` plus ``meta``
    and ``img_size``.
    """
    ckpt_path, meta, arch, wanted = _read_for_config(cfg, ckpt_path)
    backbone, head = cfg.model.backbone, cfg.model.decode_head
    for k, v in wanted.items():
        backbone[k] = v
    head["in_channels"] = arch["embed_dims"]
    head["channels"] = arch["embed_dims"]
    _check_structural_flags(backbone, arch)
    if _converter_flag_mismatches(backbone, meta):
        if meta.get("with_cls_token") is not None:
            backbone["with_cls_token"] = bool(meta["with_cls_token"])
        if meta.get("norm_eps") is not None:
            backbone["norm_cfg"] = dict(backbone.get("norm_cfg") or dict(type="LN"), eps=float(meta["norm_eps"]))
    return _point_backbone_at(cfg, ckpt_path, arch, meta, wanted["img_size"])


def check_config_against_checkpoint(cfg, ckpt_path: str) -> dict[str, Any]:
    """Point the backbone at ``ckpt_path`` after checking that the config's backbone and decode head match it.

    Raises :class:`CheckpointLoadError` listing every mismatch (dimensions, ``img_size``, head channels,
    ``patch_bias``/``final_norm``, ``with_cls_token``, LN eps, normalisation). Returns what
    :func:`adapt_config_to_checkpoint` returns.
    """
    ckpt_path, meta, arch, wanted = _read_for_config(cfg, ckpt_path)
    backbone, head = cfg.model.backbone, cfg.model.decode_head
    errors = []
    for k, v in wanted.items():
        have = backbone.get(k, 4 if k == "mlp_ratio" else None)
        if k == "img_size":
            have = (have, have) if isinstance(have, int) else tuple(have)
        if have != v:
            errors.append(f"backbone.{k}: config {have} vs checkpoint {v}")
    for k in ("in_channels", "channels"):
        if head.get(k) != arch["embed_dims"]:
            errors.append(f"decode_head.{k}: config {head.get(k)} vs checkpoint embed dim {arch['embed_dims']}")
    if errors:
        raise CheckpointLoadError(
            f"{ckpt_path} does not fit the config:\n  "
            + "\n  ".join(errors)
            + "\n(re-convert at the config's grid, e.g. 32x32 for 512 input, or use a config that matches; "
            "toy configs set adapt_backbone_to_checkpoint=True)"
        )
    _check_structural_flags(backbone, arch)
    flag_errors = _converter_flag_mismatches(backbone, meta)
    if flag_errors:
        raise CheckpointLoadError(
            f"{ckpt_path} was converted for a different backbone:\n  "
            + "\n  ".join(flag_errors)
            + "\n(override model.backbone.* with --cfg-options if this is intended)"
        )
    return _point_backbone_at(cfg, ckpt_path, arch, meta, wanted["img_size"])


def _read_for_config(cfg, ckpt_path: str) -> tuple[str, dict, dict, dict]:
    """``(absolute path, meta, architecture, backbone settings it implies)`` for a ``VisionTransformer`` config."""
    ckpt_path = os.path.abspath(ckpt_path)
    state_dict, meta = load_converted_checkpoint(ckpt_path)
    arch = architecture_from_checkpoint(state_dict, meta)
    backbone = cfg.model.backbone
    if backbone.get("type") not in BACKBONE_TYPES:
        raise CheckpointLoadError(f"expected a VisionTransformer backbone, config has {backbone.get('type')}")
    apply_checkpoint_positions(backbone, meta)
    gh, gw = arch["grid"]
    p = arch["patch_size"]
    wanted = dict(
        embed_dims=arch["embed_dims"],
        num_layers=arch["num_layers"],
        num_heads=arch["num_heads"],
        patch_size=p,
        img_size=(gh * p, gw * p),
        mlp_ratio=arch["mlp_ratio"],
    )
    return ckpt_path, meta, arch, wanted


def apply_checkpoint_positions(backbone, meta: Mapping[str, Any]) -> None:
    """Set the backbone type (and RoPE arguments) the checkpoint's positions need: ``RoPEVisionTransformer`` with
    ``meta["rope"]``'s base, rule and coordinates for a RoPE file, MMSeg's ``VisionTransformer`` otherwise."""
    rope = meta.get("rope")
    if rope:
        backbone["type"] = "RoPEVisionTransformer"
        backbone.update(rope_base=float(rope["base"]), rope_rule=str(rope["rule"]), rope_coords=str(rope["coords"]))
        backbone["num_register_tokens"] = int(meta.get("num_register_tokens", 0))  # DINOv3's storage tokens
        return
    for k in _ROPE_ARGS + ("num_register_tokens",):
        backbone.pop(k, None)
    registers = int(meta.get("num_register_tokens") or 0)
    backbone["type"] = "RegisterVisionTransformer" if registers else "VisionTransformer"
    if registers:  # DINOv2-reg / timm registers kept by the converter (--keep-tokens)
        backbone["num_register_tokens"] = registers


def _check_structural_flags(backbone, arch: dict) -> None:
    """Flags that, when wrong, make mmseg drop tensors silently: ``patch_bias`` and ``final_norm``."""
    if arch["patch_bias"] and not backbone.get("patch_bias", False):
        raise CheckpointLoadError(
            "the checkpoint has patch_embed.projection.bias but the config has patch_bias=False "
            "(mmseg's default): set model.backbone.patch_bias=True"
        )
    if arch["final_norm"] != bool(backbone.get("final_norm", False)):
        raise CheckpointLoadError(
            f"checkpoint final norm (ln1.*) present={arch['final_norm']} but config final_norm="
            f"{backbone.get('final_norm', False)}"
        )


def _converter_flag_mismatches(backbone, meta: Mapping[str, Any]) -> list[str]:
    """Flags the converter records in meta (absent in foreign files: then nothing to compare) that differ."""
    errors = []
    if meta.get("with_cls_token") is not None and bool(meta["with_cls_token"]) != bool(backbone.get("with_cls_token")):
        errors.append(f"with_cls_token: config {backbone.get('with_cls_token')} vs checkpoint {meta['with_cls_token']}")
    eps = (backbone.get("norm_cfg") or {}).get("eps", 1e-5)
    if meta.get("norm_eps") is not None and abs(float(meta["norm_eps"]) - float(eps)) > 1e-12:
        errors.append(f"norm_cfg.eps: config {eps} vs checkpoint {meta['norm_eps']}")
    return errors


def _point_backbone_at(cfg, ckpt_path: str, arch: dict, meta: dict, img_size: tuple[int, int]) -> dict[str, Any]:
    """Check the normalisation, set ``init_cfg = Pretrained(ckpt_path)``; the architecture with ``meta``."""
    if meta.get("mean") is not None and meta.get("std") is not None:
        pre = cfg.model.data_preprocessor
        m_ck, s_ck = _norm_to_255(meta["mean"]), _norm_to_255(meta["std"])
        m_cf, s_cf = list(pre.get("mean")), list(pre.get("std"))
        if any(abs(a - b) > 1e-2 for a, b in zip(m_ck + s_ck, m_cf + s_cf)):
            raise CheckpointLoadError(
                f"checkpoint normalisation mean={m_ck} std={s_ck} differs from the config's data_preprocessor "
                f"mean={m_cf} std={s_cf}: set model.data_preprocessor.mean/std to the checkpoint's values"
            )
    backbone = cfg.model.backbone
    backbone["init_cfg"] = dict(type="Pretrained", checkpoint=ckpt_path)
    backbone.pop("pretrained", None)
    cfg.model["pretrained"] = None
    out = dict(arch)
    out["meta"] = meta
    out["img_size"] = img_size
    return out


# ----------------------------------------------------------------------------------------------------------
# verification
# ----------------------------------------------------------------------------------------------------------
def verify_backbone_loaded(backbone: torch.nn.Module, ckpt: Any) -> int:
    """Check that every tensor of the checkpoint sits, unchanged, in ``backbone`` — and vice versa.

    Args:
        backbone: the (initialised) MMSeg ``VisionTransformer``.
        ckpt: a path to a converted checkpoint, or its ``state_dict``.

    Raises :class:`CheckpointLoadError` naming every file key that was not loaded (absent from the model,
    wrong shape, or different values) and every backbone parameter/buffer that the file did not provide.
    Returns the number of verified tensors.
    """
    if isinstance(ckpt, str):
        state_dict, _ = load_converted_checkpoint(ckpt)
        where = ckpt
    else:
        state_dict, where = ckpt, "checkpoint"
    model_sd = backbone.state_dict()
    not_in_model, wrong_shape, wrong_value = [], [], []
    for k, v in state_dict.items():
        if k not in model_sd:
            not_in_model.append(k)
        elif tuple(model_sd[k].shape) != tuple(v.shape):
            wrong_shape.append(f"{k} file {tuple(v.shape)} model {tuple(model_sd[k].shape)}")
        elif not torch.equal(model_sd[k].detach().cpu(), v.to(model_sd[k].dtype)):
            wrong_value.append(k)
    not_from_file = [k for k in model_sd if k not in state_dict]
    problems = labelled_problems(
        [
            ("file keys the backbone does not have (silently dropped by strict=False)", not_in_model),
            ("shape mismatches", wrong_shape),
            ("backbone tensors that differ from the file after loading", wrong_value),
            ("backbone parameters/buffers not initialised from the file", not_from_file),
        ]
    )
    if problems:
        raise CheckpointLoadError(f"pretrained backbone did not load from {where}:\n  " + "\n  ".join(problems))
    return len(state_dict)


def _pretrained_path(backbone: torch.nn.Module) -> str | None:
    init_cfg = getattr(backbone, "init_cfg", None)
    if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
        return init_cfg.get("checkpoint")
    return None


def _make_hook_class():
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper
    from mmengine.registry import HOOKS

    class VerifyPretrainedBackboneHook(Hook):
        """Before the first iteration of a fresh run, verify the backbone against its pretrained file.

        Skipped (with a log line) when the run resumed or loaded a full checkpoint, since the weights then
        legitimately differ from the pretrained file. Raises :class:`CheckpointLoadError` on failure.
        """

        priority = "VERY_HIGH"

        def before_train(self, runner) -> None:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            backbone = model.backbone
            path = _pretrained_path(backbone)
            if runner.iter > 0 or runner._load_from is not None:
                runner.logger.info(f"[segmenter] resumed at iteration {runner.iter}: pretrained check skipped")
                return
            if path is None:
                runner.logger.warning("[segmenter] no pretrained backbone configured: training from scratch")
                return
            n = verify_backbone_loaded(backbone, path)
            runner.logger.info(f"[segmenter] verified {n} pretrained backbone tensors from {path}")

    HOOKS.register_module(module=VerifyPretrainedBackboneHook, force=True)
    return VerifyPretrainedBackboneHook


try:  # registered on import so that configs can list it in custom_hooks (custom_imports this module)
    VerifyPretrainedBackboneHook = _make_hook_class()
except ImportError:  # pragma: no cover - mmengine missing: the pure functions above still work
    VerifyPretrainedBackboneHook = None


# ----------------------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------------------
def infer_num_classes(data_root: str) -> int:
    """Number of classes K of an ADE-layout folder whose PNG labels use 0 = ignore and 1..K.

    Looks for a metadata JSON in ``data_root`` first (``meta.json``, ``dataset.json``, ``info.json``,
    ``classes.json``, with ``num_classes`` or ``classes``), else scans the annotation PNGs for the largest
    label (255 ignored).
    """
    import json

    from transfer.segmenter.transforms import read_label_png

    for name in ("meta.json", "dataset.json", "info.json", "classes.json", "metadata.json"):
        path = os.path.join(data_root, name)
        if os.path.isfile(path):
            with open(path) as f:
                info = json.load(f)
            if isinstance(info, dict) and "num_classes" in info:
                return int(info["num_classes"])
            if isinstance(info, dict) and isinstance(info.get("classes"), list):
                return len(info["classes"])
            if isinstance(info, list):
                return len(info)
    top = 0
    found = False
    for split in ("training", "validation"):
        ann_dir = os.path.join(data_root, "annotations", split)
        if not os.path.isdir(ann_dir):
            continue
        for fname in os.listdir(ann_dir):
            if fname.endswith(".png"):
                arr = read_label_png(os.path.join(ann_dir, fname))  # names the file if it does not decode
                vals = arr[arr != 255]
                if vals.size:
                    top = max(top, int(vals.max()))
                found = True
    if not found:
        raise FileNotFoundError(f"no annotations/{{training,validation}}/*.png under {data_root}")
    if top < 1:
        raise ValueError(f"annotations under {data_root} contain no class labels (all 0/255)")
    return top


def set_dataset_classes(cfg, num_classes: int) -> None:
    """Set the decode head's ``num_classes`` and, for generic datasets, class names/palette metainfo."""
    cfg.model.decode_head["num_classes"] = int(num_classes)
    names = tuple(f"class{i}" for i in range(1, num_classes + 1))
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = cfg.get(loader, {}).get("dataset") if cfg.get(loader) else None
        if not ds:
            continue
        if ds.get("type") == "ADE20KDataset":
            if num_classes != 150:
                raise ValueError(f"ADE20KDataset has 150 classes, num_classes={num_classes} requested")
            continue
        meta = dict(ds.get("metainfo") or {})
        if "classes" not in meta or len(meta["classes"]) != num_classes:
            meta["classes"] = names
            meta.pop("palette", None)
        ds["metainfo"] = meta
