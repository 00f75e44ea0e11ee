"""Hugging Face transformers layouts as converter sources (docs/protocols.md §1): ``Dinov2Model`` /
``Dinov2WithRegistersModel``, ``ViTMAEModel`` and ``DINOv3ViTModel`` directories (``config.json`` +
``model.safetensors`` / ``pytorch_model.bin``), renamed into the official layouts the format readers already know.

- :func:`load_hf` reads a model directory (or one ``.safetensors`` file, with the ``config.json`` beside it if
  there is one) without importing transformers;
- :func:`detect_hf` names the layout (``hf_dinov2`` / ``hf_vitmae`` / ``hf_dinov3``) from the keys and the config's
  ``model_type``; task models (``Dinov2ForImageClassification``, ``ViTMAEForPreTraining``, ...) keep their backbone
  under ``dinov2.`` / ``dinov2_with_registers.`` / ``vit.`` / ``model.``, and their heads and decoders are dropped;
- :func:`hf_to_native` renames the tensors into the official DINOv2 layout (reader ``dinov2``), timm-style MAE keys
  (reader ``mae``) or the official DINOv3 layout (reader ``dinov3``), concatenating ``q``, ``k``, ``v`` into
  ``qkv``, and returns what the weights cannot say (heads, LayerNorm eps, registers, position semantics) in
  ``info``.

Both key spellings are accepted: what ``save_pretrained`` writes (the Hub's layout, e.g.
``encoder.layer.<i>.attention.attention.query``) and the in-memory ``state_dict()`` of transformers 5
(``attention.q_proj``, ``layers.<i>`` for ViTMAE, ``model.layer.<i>`` for DINOv3).

Semantics, read from the transformers code and checked against its outputs by the fixtures of
``tools/make_hf_fixtures.py`` (``info["pos_interpolation"]`` names a rule of
``pretrain.models.position_field.POS_INTERPOLATION_RULES``):

- ``Dinov2Model``: ``position_embeddings`` resized *by size* (bicubic, ``align_corners=False``, no antialias, in
  float32), i.e. rule ``size``, not the official DINOv2 code's ``scale_factor`` with offset 0.1;
- ``Dinov2WithRegistersModel``: by size with ``antialias=True`` (rule ``size_antialias``); registers are inserted
  after the CLS token *after* the positions are added, so they carry no position;
- ``ViTMAEModel``: by size, no antialias (rule ``size``), in the embeddings' dtype, only with
  ``interpolate_pos_encoding=True``; the CLS token gets its position slot; the forward shuffles and masks patches
  (``mask_ratio``, ``noise``), a converted backbone never masks;
- ``DINOv3ViTModel``: no additive position; 2-D RoPE on the patch tokens only (CLS and registers unrotated), patch
  centres at ``(i + 0.5) / n`` per axis mapped to ``[-1, 1]`` (the official ``normalize_coords="separate"``),
  periods ``rope_theta ** (4t / head_dim)`` (``inv_freq = 1 / periods``, angle ``2 pi * coord / period``),
  rotate-half channel layout, coordinate shift / jitter / rescale only in training; the final ``norm`` applies to
  every token (no separate CLS norm).
"""

from __future__ import annotations

import json
import os
import re

import torch

from .canonical import ConversionError, infer_num_heads

HF_KINDS = ("hf_dinov2", "hf_vitmae", "hf_dinov3")
NATIVE_FORMAT = {"hf_dinov2": "dinov2", "hf_vitmae": "mae", "hf_dinov3": "dinov3"}
MODEL_TYPES = {
    "dinov2": "hf_dinov2",
    "dinov2_with_registers": "hf_dinov2",
    "vit_mae": "hf_vitmae",
    "dinov3_vit": "hf_dinov3",
}
# task-model prefixes in front of the backbone, tried in order (the longest first)
TASK_PREFIXES = ("dinov2_with_registers.", "dinov2.", "vit.", "model.")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# transformers' config defaults for the fields used here (a config.json may omit a default)
CONFIG_DEFAULTS = {
    "dinov2": {"num_attention_heads": 12, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "use_swiglu_ffn": False},
    "dinov2_with_registers": {
        "num_attention_heads": 12,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "use_swiglu_ffn": False,
        "num_register_tokens": 4,
    },
    "vit_mae": {"num_attention_heads": 12, "layer_norm_eps": 1e-12, "hidden_act": "gelu"},
    "dinov3_vit": {
        "num_attention_heads": 6,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
        "rope_theta": 100.0,
        "use_gated_mlp": False,
        "num_register_tokens": 0,
    },
}
# DINOv3's RoPE coordinates: per axis in [-1, 1] at the patch centres (official ``normalize_coords="separate"``)
DINOV3_ROPE_COORDS = "normalized"  # pretrain/models/rope.py ROPE_COORDS

# transformers' ViT attention: the Hub (save_pretrained) names and transformers 5's in-memory names
_HF_VIT_ATTENTION = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
}
_DINOV2_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    **_HF_VIT_ATTENTION,
}
_MAE_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    **_HF_VIT_ATTENTION,
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_DINOV3_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.up_proj": "mlp.fc1",
    "mlp.down_proj": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
    "attention.o_proj": "attn.proj",
}
# (block-prefix regex, per-block names, top-level names) per layout
_LAYOUTS = {
    "hf_dinov2": (
        r"encoder\.layer\.(\d+)\.",
        _DINOV2_BLOCK,
        {
            "embeddings.cls_token": "cls_token",
            "embeddings.mask_token": "mask_token",
            "embeddings.position_embeddings": "pos_embed",
            "embeddings.register_tokens": "register_tokens",
            "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
            "layernorm.weight": "norm.weight",
            "layernorm.bias": "norm.bias",
        },
    ),
    "hf_vitmae": (
        r"(?:encoder\.layer|layers)\.(\d+)\.",
        _MAE_BLOCK,
        {
            "embeddings.cls_token": "cls_token",
            "embeddings.position_embeddings": "pos_embed",
            "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
            "layernorm.weight": "norm.weight",
            "layernorm.bias": "norm.bias",
        },
    ),
    "hf_dinov3": (
        r"(?:model\.)?layer\.(\d+)\.",
        _DINOV3_BLOCK,
        {
            "embeddings.cls_token": "cls_token",
            "embeddings.mask_token": "mask_token",
            "embeddings.register_tokens": "storage_tokens",
            "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
            "norm.weight": "norm.weight",
            "norm.bias": "norm.bias",
        },
    ),
}
_GATED = re.compile(r"\.mlp\.(weights_in|weights_out|gate_proj|w12|w3)\.")


# ----------------------------------------------------------------------------------------------------------------
# loading


def is_hf_source(path) -> bool:
    """A Hugging Face model directory or a ``.safetensors`` file (what :func:`load_hf` reads)."""
    path = os.fspath(path)
    return os.path.isdir(path) or path.endswith(".safetensors")


def load_hf(path) -> tuple[dict, dict | None]:
    """``(state, hf_config)`` of a model directory or a ``.safetensors`` file; ``hf_config`` is None when there is
    no ``config.json``. Raises :class:`ConversionError` naming the path for anything missing or unreadable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        weights = next((os.path.join(path, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))), None)
        if weights is None:
            raise ConversionError(
                f"no weights in the model directory {path}: expected one of {list(WEIGHT_FILES)}; "
                f"found {sorted(os.listdir(path))[:12]}"
            )
        config_dir = path
    elif os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ConversionError(f"not a Hugging Face source: {path} (expected a model directory or .safetensors)")
        weights, config_dir = path, os.path.dirname(os.path.abspath(path))
    else:
        raise ConversionError(f"source not found: {path}")
    return _load_weights(weights), _load_config(os.path.join(config_dir, "config.json"))


def _load_weights(path: str) -> dict:
    if path.endswith(".index.json"):  # sharded: {"weight_map": {key: shard file}}
        index = _read_json(path, "shard index")
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise ConversionError(f"shard index {path} has no 'weight_map'")
        state = {}
        for shard in shards:
            state.update(_load_weights(os.path.join(os.path.dirname(path), shard)))
        return state
    if not os.path.isfile(path):
        raise ConversionError(f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return dict(load_file(path, device="cpu"))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"cannot read the weights {path}: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read the {what} {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"the {what} {path} is a JSON {type(obj).__name__}, not an object")
    return obj


def _load_config(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    config = _read_json(path, "config")
    prep = os.path.join(os.path.dirname(path), "preprocessor_config.json")
    if os.path.isfile(prep):  # the image processor's mean/std, when the directory has one
        p = _read_json(prep, "preprocessor config")
        if "image_mean" in p and "image_std" in p:
            config = {**config, "_image_mean": p["image_mean"], "_image_std": p["image_std"]}
    return config


# ----------------------------------------------------------------------------------------------------------------
# detection


def backbone_state(state: dict) -> tuple[dict, list, str]:
    """Strip a task model's backbone prefix: ``(backbone state, dropped (key, reason), prefix)``."""
    if any(k.startswith("embeddings.") for k in state):
        return dict(state), [], ""
    for p in TASK_PREFIXES:
        if any(k.startswith(p + "embeddings.") for k in state):
            inner = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
            dropped = [(k, _head_reason(k)) for k in state if not k.startswith(p)]
            return inner, dropped, p
    return dict(state), [], ""


def _head_reason(key: str) -> str:
    if key.startswith("decoder"):
        return "MAE decoder: not part of the backbone"
    return "task head (classifier, pooler, ...): not part of the backbone"


def _kind_from_keys(keys: set) -> str | None:
    if "embeddings.patch_embeddings.weight" in keys and any(re.match(r"(model\.)?layer\.\d+\.", k) for k in keys):
        return "hf_dinov3"
    if "embeddings.patch_embeddings.projection.weight" not in keys:
        return None
    if any(re.match(r"(encoder\.layer|layers)\.\d+\.layernorm_before\.", k) for k in keys):
        return "hf_vitmae"
    if any(re.match(r"encoder\.layer\.\d+\.norm1\.", k) for k in keys):
        return "hf_dinov2"
    return None


def transformers_config(hf_config: dict | None) -> dict | None:
    """The config if it is a transformers one (it has ``model_type``; timm's hub ``config.json`` has none)."""
    return hf_config if isinstance(hf_config, dict) and "model_type" in hf_config else None


def detect_hf(state: dict, hf_config: dict | None = None) -> str | None:
    """``hf_dinov2`` / ``hf_vitmae`` / ``hf_dinov3`` from the keys and ``model_type``; None if the keys are not a
    Hugging Face ViT layout and there is no transformers config. An unsupported ``model_type``, or keys that
    disagree with it, are an error naming both."""
    inner, _, _ = backbone_state(state)
    kind = _kind_from_keys(set(inner))
    hf_config = transformers_config(hf_config)
    if hf_config is None:
        return kind
    mt = hf_config.get("model_type")
    if mt not in MODEL_TYPES:
        raise ConversionError(
            f"unsupported Hugging Face model_type {mt!r} (architectures {hf_config.get('architectures')}); "
            f"supported: {sorted(MODEL_TYPES)}"
        )
    if kind != MODEL_TYPES[mt]:
        raise ConversionError(
            f"config.json says model_type {mt!r} but the weights look like {kind or 'no known layout'} "
            f"(e.g. {sorted(inner)[:6]})"
        )
    return kind


# ----------------------------------------------------------------------------------------------------------------
# renaming


def _rename(inner: dict, kind: str) -> tuple[dict, dict, list]:
    """Per-layout renaming: ``(native tensors, {block: {"q"/"k"/"v": {weight/bias: t}}}, unknown keys)``."""
    block_rx, block_names, top_names = _LAYOUTS[kind]
    rx = re.compile(rf"^{block_rx}(.+)\.(weight|bias|lambda1)$")
    native, qkv, unknown = {}, {}, []
    for key, t in inner.items():
        if key in top_names:
            native[top_names[key]] = t
            continue
        m = rx.match(key)
        field = None
        if m:
            i, name, param = int(m.group(1)), m.group(2), m.group(3)
            if param == "lambda1":
                name, param = f"{name}.lambda1", None
            field = block_names.get(name)
        if field is None:
            unknown.append(key)
        elif field in ("q", "k", "v"):
            qkv.setdefault(i, {}).setdefault(field, {})[param] = t
        elif param is None:
            native[f"blocks.{i}.{field}"] = t
        else:
            native[f"blocks.{i}.{field}.{param}"] = t
    return native, qkv, unknown


def _fuse_qkv(native: dict, qkv: dict, kind: str, info: dict) -> None:
    """``blocks.<i>.attn.qkv.{weight,bias}`` = rows ``[q; k; v]``; a missing bias part is zeros (exact)."""
    k_bias = False
    for i, parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if "weight" not in parts.get(p, {})]
        if missing:
            raise ConversionError(f"block {i}: missing attention projection(s) {missing} (weights)")
        ws = [parts[p]["weight"] for p in "qkv"]
        native[f"blocks.{i}.attn.qkv.weight"] = torch.cat(ws, 0)
        biases = [parts[p].get("bias") for p in "qkv"]
        if all(b is None for b in biases):
            continue
        if biases[1] is not None and bool(biases[1].ne(0).any()):
            k_bias = True
        biases = [torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b for b, w in zip(biases, ws)]
        native[f"blocks.{i}.attn.qkv.bias"] = torch.cat(biases, 0)
    info["k_bias"] = k_bias
    if kind == "hf_dinov3" and k_bias:
        info["notes"].append("the source's k projection has a nonzero bias: kept (no bias mask)")


def _model_type(kind: str, inner: dict, hf_config: dict | None) -> str:
    if hf_config is not None:
        return str(hf_config["model_type"])
    if kind == "hf_dinov2":
        return "dinov2_with_registers" if "embeddings.register_tokens" in inner else "dinov2"
    return {"hf_vitmae": "vit_mae", "hf_dinov3": "dinov3_vit"}[kind]


def _setting(cfg: dict, model_type: str, name: str):
    return cfg.get(name, CONFIG_DEFAULTS[model_type].get(name))


def _check_config(native: dict, cfg: dict, model_type: str) -> None:
    """The config's architecture agrees with the weights, and is one the targets can express."""
    act = _setting(cfg, model_type, "hidden_act")
    if act != "gelu":
        raise ConversionError(f"hidden_act {act!r}: detectron2/MMSeg/timm ViTs use exact GELU ('gelu') only")
    if _setting(cfg, model_type, "use_swiglu_ffn") or _setting(cfg, model_type, "use_gated_mlp"):
        raise ConversionError(
            f"{model_type} with a SwiGLU / gated MLP (e.g. DINOv2 ViT-g, DINOv3 ViT-H+/7B): "
            "detectron2/MMSeg ViTs only have a GELU MLP"
        )
    w = native.get("patch_embed.proj.weight")
    if w is None:
        raise ConversionError("missing the patch embedding (embeddings.patch_embeddings...weight)")
    depth = 1 + max((int(k.split(".")[1]) for k in native if k.startswith("blocks.")), default=-1)
    for name, have in (("hidden_size", int(w.shape[0])), ("num_hidden_layers", depth)):
        if name in cfg and int(cfg[name]) != have:
            raise ConversionError(f"config.json {name}={cfg[name]} but the weights have {have}")
    regs = native.get("register_tokens", native.get("storage_tokens"))
    have_regs = 0 if regs is None else int(regs.shape[1])
    if "num_register_tokens" in cfg and int(cfg["num_register_tokens"]) != have_regs:
        raise ConversionError(
            f"config.json num_register_tokens={cfg['num_register_tokens']} but the weights have {have_regs}"
        )
    if "patch_size" in cfg and int(cfg["patch_size"]) != int(w.shape[-1]):
        raise ConversionError(f"config.json patch_size={cfg['patch_size']} but the kernel is {tuple(w.shape[-2:])}")


def _fill_biases(native: dict, info: dict) -> None:
    """Zeros for absent output-projection / MLP biases (DINOv3 ``proj_bias`` / ``mlp_bias`` false): exact."""
    filled = 0
    for key in [k for k in native if k.endswith((".attn.proj.weight", ".mlp.fc1.weight", ".mlp.fc2.weight"))]:
        bias = key[: -len("weight")] + "bias"
        if bias not in native:
            native[bias] = torch.zeros(native[key].shape[0], dtype=native[key].dtype)
            filled += 1
    if filled:
        info["notes"].append(f"{filled} projection/MLP bias(es) absent in the source: zeros written (exact)")


def _dinov3_extras(native: dict, info: dict) -> None:
    """Official DINOv3 shapes: ``mask_token`` ``(1, D)``, no ``storage_tokens`` without registers, and the
    ``rope_embed.periods`` buffer the official model saves (``base ** (4t / head_dim)``)."""
    mt = native.get("mask_token")
    if mt is not None and mt.ndim == 3:
        native["mask_token"] = mt.reshape(1, -1)
    st = native.get("storage_tokens")
    if st is not None and st.shape[1] == 0:
        del native["storage_tokens"]
    d = int(native["patch_embed.proj.weight"].shape[0])
    if info["num_heads"] is None:  # no config.json: the standard table, else an error asking for --num-heads
        info["num_heads"] = infer_num_heads(d)[0]
    heads = info["num_heads"]
    if d % heads or (d // heads) % 4:
        raise ConversionError(f"DINOv3 RoPE needs num_attention_heads dividing {d} into heads of 4k channels")
    q = d // heads // 4
    native["rope_embed.periods"] = info["rope_base"] ** (2 * torch.arange(q, dtype=torch.float32) / (2 * q))


def _info(kind: str, model_type: str, cfg: dict, native: dict, dropped: list, num_heads=None) -> dict:
    regs = native.get("register_tokens", native.get("storage_tokens"))
    info = {
        "kind": kind,
        "model_type": model_type,
        "architectures": list(cfg.get("architectures") or []),
        "num_heads": num_heads or (_setting(cfg, model_type, "num_attention_heads") if cfg else None),
        "norm_eps": float(_setting(cfg, model_type, "layer_norm_eps")),
        "num_registers": 0 if regs is None else int(regs.shape[1]),
        "pos_interpolation": {"dinov2": "size", "dinov2_with_registers": "size_antialias", "vit_mae": "size"}.get(
            model_type
        ),
        "rope_base": float(_setting(cfg, model_type, "rope_theta")) if kind == "hf_dinov3" else None,
        "rope": None,
        "mean": cfg.get("_image_mean"),
        "std": cfg.get("_image_std"),
        "dropped": list(dropped),
        "notes": [],
    }
    if kind == "hf_dinov3":
        info["rope"] = {"rule": "dinov3", "base": info["rope_base"], "coords": DINOV3_ROPE_COORDS}
    if not cfg:
        info["notes"].append(f"no config.json: transformers' {model_type} defaults assumed (eps, position rule)")
    return info


def hf_to_native(
    state: dict, hf_config: dict | None, kind: str, num_heads: int | None = None
) -> tuple[dict, str, dict]:
    """Rename a Hugging Face layout into the official layout of ``NATIVE_FORMAT[kind]``:
    ``(native state, native format, info)`` (module docstring; ``info`` keys ``num_heads``, ``norm_eps``,
    ``num_registers``, ``pos_interpolation``, ``rope_base``, ``rope``, ``k_bias``, ``mean``/``std``, ``dropped``,
    ``notes``). ``num_heads`` overrides the config's ``num_attention_heads`` (``--num-heads``)."""
    if kind not in HF_KINDS:
        raise ConversionError(f"unknown Hugging Face layout {kind!r}; one of {HF_KINDS}")
    inner, dropped, prefix = backbone_state(state)
    native, qkv, unknown = _rename(inner, kind)
    if unknown:
        gated = [k for k in unknown if _GATED.search("." + k)]
        hint = " (SwiGLU / gated MLP, e.g. DINOv2 ViT-g: detectron2/MMSeg ViTs only have a GELU MLP)" if gated else ""
        raise ConversionError(
            f"unknown key(s) in the {kind} source: {sorted(unknown)[:12]}{' ...' if len(unknown) > 12 else ''}{hint}"
        )
    hf_config = transformers_config(hf_config)
    cfg = hf_config or {}
    model_type = _model_type(kind, inner, hf_config)
    _check_config(native, cfg, model_type)
    info = _info(kind, model_type, cfg, native, dropped, num_heads)
    if prefix:
        info["notes"].append(f"backbone taken from the task model's {prefix!r} entries")
    if kind == "hf_vitmae" and float(cfg.get("mask_ratio", 0.75)) > 0:
        info["notes"].append(
            f"ViTMAEModel's own forward drops mask_ratio={cfg.get('mask_ratio', 0.75)} of the patches at random; "
            "the converted backbone sees every patch (as ViTMAEModel with mask_ratio=0)"
        )
    _fuse_qkv(native, qkv, kind, info)
    _fill_biases(native, info)
    if kind == "hf_dinov3":
        _dinov3_extras(native, info)
    return native, NATIVE_FORMAT[kind], info


def read_hf(path, num_heads: int | None = None) -> tuple[dict, str | None, dict | None]:
    """:func:`load_hf` + :func:`detect_hf` + :func:`hf_to_native` for a directory or ``.safetensors`` file:
    ``(native state, native format, info)``. Weights that are not a Hugging Face layout, without a transformers
    ``config.json`` (e.g. timm's ``model.safetensors``), come back as ``(state, None, None)`` for the format
    readers; an unsupported transformers ``model_type`` is an error."""
    state, hf_config = load_hf(path)
    kind = detect_hf(state, hf_config)
    if kind is None:
        return state, None, None
    return hf_to_native(state, hf_config, kind, num_heads)
