"""Target writers: a LayerScale-folded :class:`CanonicalViT` -> the object saved for each target framework.

Output formats (all tensors float32 on CPU, metadata plain Python types so ``torch.load(weights_only=True)``
reads them):

- ``detectron2``: ``{"model": {"backbone.net.<k>": tensor}, "meta": {...}}`` with detectron2 ``ViT`` names
  (``patch_embed.proj.*``, ``pos_embed`` ``(1, 1 + g*g, D)`` with the CLS slot first, ``blocks.<i>.{norm1,
  attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*``). detectron2's ViT has no final norm and no CLS token: the
  final norm is dropped; with ``--keep-tokens`` ``backbone.net.cls_token`` and ``backbone.net.reg_token`` are
  written too, for the project's own SDPA backbone that can keep them. Build the ViT with
  ``img_size = pretrain_img_size = g * patch``, ``pretrain_use_cls_token=True``, ``use_rel_pos=False``,
  ``window_size=0`` (``meta`` has every argument). The grid must be square (detectron2's ``get_abs_pos``).
- ``mmseg``: ``{"state_dict": {...}, "meta": {...}}`` with MMSeg ``VisionTransformer`` names
  (``patch_embed.projection``, ``cls_token``, ``pos_embed``, ``layers.<i>.{ln1, ln2, attn.attn.in_proj_weight,
  attn.attn.in_proj_bias, attn.attn.out_proj, ffn.layers.0.0, ffn.layers.1}``, final norm ``ln1``). MMSeg's
  ``init_weights`` reads ``checkpoint["state_dict"]``. Configs must set ``patch_bias=True`` (1.2.2 defaults to
  False and would silently drop the bias) and ``img_size = grid * patch`` so no resize happens at load.
- ``timm``: ``{"state_dict": {...}, "meta": {..., "timm_kwargs": {...}}}`` holding a plain timm
  ``VisionTransformer`` state dict (LayerScale folded, ``reg_token`` if registers, ``pos_embed`` with the standard
  prefix slots ``[CLS, registers...]``: the CLS slot holds the CLS position, register slots are zeros since
  registers get no position). ``VisionTransformer(**meta["timm_kwargs"]).load_state_dict(ckpt["state_dict"])``;
  ``timm.models.load_checkpoint`` unwraps ``"state_dict"`` itself.

A RoPE source (docs/positions.md) writes no ``pos_embed``; ``meta["rope"]`` records the rule, base and coordinate
convention, which the project's backbones apply: detectron2 -> :class:`transfer.vitdet.backbone.SDPAViT`
(``use_rope=True``, ``use_abs_pos=False``; detectron2's own ViT cannot express RoPE), MMSeg ->
:class:`transfer.segmenter.rope_vit.RoPEVisionTransformer`. timm's ``VisionTransformer`` has no 2-D RoPE: refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from transfer.vitdet.plain_vit import plain_vit_kwargs

from .canonical import CANONICAL_BLOCK_PARAMS, CanonicalViT, ConversionError, patch_pos_at

TARGETS = ("detectron2", "mmseg", "timm")
DEFAULT_GRIDS = {"detectron2": (64, 64), "mmseg": (32, 32), "timm": (14, 14)}  # 1024/16, 512/16, 224/16
CONVERTER = "ssl-vit-toolkit/convert"
CONVERTER_VERSION = 1

#: Key prefix of the ViT inside a detectron2 model (``model.backbone.net``).
D2_KEY_PREFIX = "backbone.net."
#: Canonical block parameter -> MMSeg ``VisionTransformer`` layer parameter (vit2mmseg names).
MMSEG_BLOCK_KEYS = {
    "norm1.weight": "ln1.weight",
    "norm1.bias": "ln1.bias",
    "attn.qkv.weight": "attn.attn.in_proj_weight",
    "attn.qkv.bias": "attn.attn.in_proj_bias",
    "attn.proj.weight": "attn.attn.out_proj.weight",
    "attn.proj.bias": "attn.attn.out_proj.bias",
    "norm2.weight": "ln2.weight",
    "norm2.bias": "ln2.bias",
    "mlp.fc1.weight": "ffn.layers.0.0.weight",
    "mlp.fc1.bias": "ffn.layers.0.0.bias",
    "mlp.fc2.weight": "ffn.layers.1.weight",
    "mlp.fc2.bias": "ffn.layers.1.bias",
}
#: Canonical block parameter -> detectron2 / timm block parameter (the same names).
SAME_BLOCK_KEYS = {k: k for k in CANONICAL_BLOCK_PARAMS}


def int_if_whole(x: float) -> int | float:
    """``4.0 -> 4``, other values unchanged (MMSeg builds ``Linear(D, mlp_ratio * D)`` and needs an int ratio)."""
    return int(x) if float(x).is_integer() else x


@dataclass
class WriteResult:
    """What a writer produced: the object to save, its target state dict, provenance and drops."""

    obj: dict
    state: dict
    meta: dict
    mapped: list = field(default_factory=list)  # (canonical name, target key)
    dropped: list = field(default_factory=list)  # (canonical name, reason)
    notes: list = field(default_factory=list)


@dataclass
class _TargetState:
    """A target state dict under construction, with what the summary reports about it."""

    prefix: str = ""
    state: dict = field(default_factory=dict)
    mapped: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def put(self, name: str, key: str, t: torch.Tensor) -> None:
        """Write canonical entry ``name`` as target key ``prefix + key`` (float32, contiguous, a copy)."""
        self.state[self.prefix + key] = _f32(t)
        self.mapped.append((name, self.prefix + key))

    def put_patch_embed(self, c: CanonicalViT, key: str) -> None:
        """The patch embedding as ``<key>.weight`` / ``<key>.bias``."""
        for part in ("weight", "bias"):
            self.put(f"patch_embed.proj.{part}", f"{key}.{part}", c.state[f"patch_embed.proj.{part}"])

    def put_blocks(self, c: CanonicalViT, block_keys: dict, layer: str = "blocks") -> None:
        """Every block parameter ``k`` as ``<layer>.<i>.<block_keys[k]>``."""
        for i in range(c.arch.depth):
            for k, v in block_keys.items():
                self.put(f"blocks.{i}.{k}", f"{layer}.{i}.{v}", c.state[f"blocks.{i}.{k}"])

    def result(self, state_key: str, meta: dict) -> WriteResult:
        """``{state_key: state, "meta": meta}`` and its bookkeeping."""
        return WriteResult(
            obj={state_key: self.state, "meta": meta},
            state=self.state,
            meta=meta,
            mapped=self.mapped,
            dropped=self.dropped,
            notes=self.notes,
        )


def _check_ready(c: CanonicalViT, grid) -> tuple[int, int]:
    if c.has_layerscale:
        raise ConversionError("internal: writers need LayerScale folded first (fold_layerscale)")
    gh, gw = int(grid[0]), int(grid[1])
    if gh < 1 or gw < 1:
        raise ConversionError(f"--grid must be positive, got {gh} {gw}")
    return gh, gw


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous().clone()


def _pos_embed(c: CanonicalViT, grid, extra_zero_slots: int = 0) -> torch.Tensor:
    """``(1, 1 + extra + gh*gw, D)``: CLS slot (its position, or zeros), zero slots, the materialised patch grid."""
    patch = patch_pos_at(c, grid)
    d = patch.shape[-1]
    cls = c.cls_pos.float() if c.cls_pos is not None else torch.zeros(1, 1, d)
    parts = [cls] + ([torch.zeros(1, extra_zero_slots, d)] if extra_zero_slots else []) + [patch]
    return torch.cat(parts, dim=1)


def _base_meta(c: CanonicalViT, target: str, grid) -> dict:
    a = c.arch
    return {
        "converter": CONVERTER,
        "converter_version": CONVERTER_VERSION,
        "target": target,
        "source_format": c.source_format,
        "embed_dim": a.embed_dim,
        "depth": a.depth,
        "num_heads": a.num_heads,
        "patch_size": a.patch_size,
        "mlp_ratio": a.mlp_ratio,
        "qkv_bias": True,
        "norm_eps": a.norm_eps,
        "grid": [int(grid[0]), int(grid[1])],
        "img_size": [int(grid[0]) * a.patch_size, int(grid[1]) * a.patch_size],
        "mean": list(c.mean) if c.mean is not None else None,
        "std": list(c.std) if c.std is not None else None,
        "layerscale_folded": bool(c.layerscale_folded),
        "source_num_register_tokens": c.num_registers,
        "position_source": "rope" if c.rope is not None else ("field" if c.pos_field is not None else "grid"),
        "rope": dict(c.rope) if c.rope is not None else None,
    }


def _registers_policy(c: CanonicalViT, target: str, keep: bool, drop_registers: bool) -> bool:
    """Whether registers are written; an error when the target cannot use them and dropping was not asked."""
    if not c.num_registers:
        return False
    if keep:
        return True
    if not drop_registers:
        project = {"detectron2": "SDPA backbone", "mmseg": "RegisterVisionTransformer"}.get(target)
        hint = f"pass --keep-tokens (project {project}) or --drop-registers" if project else "pass --drop-registers"
        raise ConversionError(
            f"the source has {c.num_registers} register tokens ({c.src('reg_token')!r}) but the {target} target "
            f"cannot use them: {hint} (dropping them changes the features: the check then compares with the source "
            "run without registers)"
        )
    return False


def write_detectron2(
    c: CanonicalViT, grid, keep_tokens: bool = False, drop_registers: bool = False, **_
) -> WriteResult:
    """detectron2 ``ViT`` checkpoint with explicit ``backbone.net.*`` keys (never the suffix heuristics)."""
    gh, gw = _check_ready(c, grid)
    if gh != gw:
        raise ConversionError(
            f"detectron2 needs a square grid (its get_abs_pos assumes a square pos_embed), got {gh}x{gw}"
        )
    keep_regs = _registers_policy(c, "detectron2", keep_tokens, drop_registers)
    out = _TargetState(prefix=D2_KEY_PREFIX)
    out.put_patch_embed(c, "patch_embed.proj")
    if c.rope is None:
        out.put("pos", "pos_embed", _pos_embed(c, (gh, gw)))
    else:
        out.notes.append("RoPE: no pos_embed written; build transfer.vitdet.backbone.SDPAViT with meta's rope args")
    out.put_blocks(c, SAME_BLOCK_KEYS)
    for k in ("norm.weight", "norm.bias"):
        if k in c.state:
            out.dropped.append((k, "detectron2 ViT has no final norm"))
    cls_kept = _detectron2_tokens(c, out, keep_tokens, keep_regs)
    meta = _base_meta(c, "detectron2", (gh, gw))
    # the plain-ViT constructor arguments the file is meant for (transfer.vitdet.plain_vit)
    vit = plain_vit_kwargs(
        img_size=gh * c.arch.patch_size,
        patch_size=c.arch.patch_size,
        embed_dim=c.arch.embed_dim,
        depth=c.arch.depth,
        num_heads=c.arch.num_heads,
    )
    meta.update(
        num_register_tokens=c.num_registers if keep_regs else 0,
        cls_token_kept=cls_kept,
        final_norm=False,
        **{k: vit[k] for k in ("pretrain_img_size", "pretrain_use_cls_token", "use_rel_pos", "window_size")},
        key_prefix=D2_KEY_PREFIX,
        use_abs_pos=c.rope is None,
    )
    if c.rope is not None:
        meta.update(pretrain_use_cls_token=False, use_rope=True, backbone="transfer.vitdet.backbone.SDPAViT")
    return out.result("model", meta)


def _detectron2_tokens(c: CanonicalViT, out: _TargetState, keep_tokens: bool, keep_regs: bool) -> bool:
    """CLS and register tokens of the detectron2 target (kept only with ``--keep-tokens``); whether CLS is kept."""
    cls_kept = bool(keep_tokens and c.cls_token is not None)
    if c.cls_token is not None:
        if cls_kept:
            cls = c.cls_token if c.cls_pos is None or c.rope is None else c.cls_token + c.cls_pos
            out.put("cls_token", "cls_token", cls)
        else:
            out.dropped.append(
                (
                    "cls_token",
                    "detectron2 ViT has no CLS token (pos_embed keeps the CLS slot only as "
                    "the placeholder pretrain_use_cls_token=True expects; --keep-tokens keeps it)",
                )
            )
    if c.num_registers:
        if keep_regs:
            out.put("reg_token", "reg_token", c.reg_token)
        else:
            out.dropped.append(("reg_token", "register tokens dropped (--drop-registers)"))
    if cls_kept or keep_regs:
        out.notes.append(
            "--keep-tokens: backbone.net.cls_token/reg_token are for the project's token-keeping SDPA backbone; "
            "detectron2's own ViT ignores them (the check covers every other key)"
        )
    if c.num_registers and not keep_regs:
        out.notes.append("registers dropped: the check compares with the source run without registers")
    return cls_kept


def write_mmseg(c: CanonicalViT, grid, drop_registers: bool = False, keep_tokens: bool = False, **_) -> WriteResult:
    """MMSeg ``VisionTransformer`` state dict (vit2mmseg names) inside ``{"state_dict", "meta"}``."""
    gh, gw = _check_ready(c, grid)
    # registers: kept for the project's RoPE backbone (no stock alternative), else as --keep-tokens decides
    keep_regs = bool(c.num_registers) and not drop_registers
    if c.rope is None:
        keep_regs = _registers_policy(c, "mmseg", keep_tokens, drop_registers)
    out = _TargetState()
    out.put_patch_embed(c, "patch_embed.projection")
    d = c.arch.embed_dim
    with_cls = c.cls_token is not None
    if with_cls:
        out.put("cls_token", "cls_token", c.cls_token)
    else:
        out.state["cls_token"] = torch.zeros(1, 1, d)
        out.notes.append("no CLS token in the source: zeros written and meta with_cls_token=False")
    if c.rope is None:
        out.put("pos", "pos_embed", _pos_embed(c, (gh, gw)))
    else:
        out.notes.append("RoPE: no pos_embed written; for RoPEVisionTransformer (transfer.segmenter.rope_vit)")
    out.put_blocks(c, MMSEG_BLOCK_KEYS, layer="layers")
    final_norm = c.has_final_norm
    if final_norm:
        out.put("norm.weight", "ln1.weight", c.state["norm.weight"])
        out.put("norm.bias", "ln1.bias", c.state["norm.bias"])
    else:
        out.notes.append("the source has no final norm: meta final_norm=False")
    if keep_regs:  # the project's backbones keep them in the sequence after CLS (DINOv3's storage tokens)
        out.put("reg_token", "reg_token", c.reg_token)
    elif c.num_registers:
        out.dropped.append(("reg_token", "MMSeg VisionTransformer has no register tokens (--drop-registers)"))
        out.notes.append("registers dropped: the check compares with the source run without registers")
    meta = _base_meta(c, "mmseg", (gh, gw))
    meta.update(
        mlp_ratio=int_if_whole(c.arch.mlp_ratio),
        embed_dims=d,
        num_layers=c.arch.depth,
        num_register_tokens=c.num_registers if keep_regs else 0,
        cls_token_kept=with_cls,
        with_cls_token=with_cls,
        final_norm=final_norm,
        patch_bias=True,
        interpolate_mode="bicubic",
        backbone_type=mmseg_backbone_type(c.rope is not None, keep_regs),
    )
    return out.result("state_dict", meta)


def mmseg_backbone_type(rope: bool, registers: bool) -> str:
    """The MMSeg backbone a converted file needs: the project's RoPE or register ViT, else MMSeg's own."""
    if rope:
        return "RoPEVisionTransformer"
    return "RegisterVisionTransformer" if registers else "VisionTransformer"


def timm_kwargs(c: CanonicalViT, grid, keep_regs: bool) -> dict:
    """Keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` matching :func:`write_timm`."""
    a = c.arch
    with_cls = c.cls_token is not None
    return dict(
        img_size=[int(grid[0]) * a.patch_size, int(grid[1]) * a.patch_size],
        patch_size=a.patch_size,
        embed_dim=a.embed_dim,
        depth=a.depth,
        num_heads=a.num_heads,
        mlp_ratio=a.mlp_ratio,
        qkv_bias=True,
        class_token=with_cls,
        reg_tokens=c.num_registers if keep_regs else 0,
        no_embed_class=False,
        num_classes=0,
        global_pool="token" if with_cls else "avg",
        fc_norm=False,
        final_norm=c.has_final_norm,
    )


#: timm's DINOv3 models by width (``timm.models.eva``; the ``_qkvb`` variants hold q and v biases).
TIMM_DINOV3_MODELS = {384: "vit_small_patch16_dinov3_qkvb", 768: "vit_base_patch16_dinov3_qkvb"}


def eva_state(c: CanonicalViT) -> dict:
    """A LayerScale-folded DINOv3-rule RoPE model as a timm ``Eva`` (``vit_*_patch16_dinov3_qkvb``) state dict:
    q/k back in the rotate-half layout, ``q_bias``/``v_bias`` (the k bias must be zero: Eva has none), unit
    ``gamma_1/2`` (LayerScale is folded into the projections)."""
    from .canonical import permute_qk_heads

    a = c.arch
    out = {"patch_embed.proj.weight": c.state["patch_embed.proj.weight"], "patch_embed.proj.bias": c.state[
        "patch_embed.proj.bias"]}  # fmt: skip
    if c.cls_token is not None:
        out["cls_token"] = c.cls_token
    if c.num_registers:
        out["reg_token"] = c.reg_token
    for i in range(a.depth):
        w, b = permute_qk_heads(c.state[f"blocks.{i}.attn.qkv.weight"], c.state[f"blocks.{i}.attn.qkv.bias"],
                                a.num_heads, to="half")  # fmt: skip
        q, k, v = b.chunk(3)
        if k.abs().max() > 0:
            raise ConversionError(f"block {i} has a non-zero k bias, which timm's DINOv3 (Eva) model cannot hold")
        out.update({f"blocks.{i}.attn.qkv.weight": w, f"blocks.{i}.attn.q_bias": q, f"blocks.{i}.attn.v_bias": v})
        for k_ in CANONICAL_BLOCK_PARAMS:
            if not k_.startswith("attn.qkv"):
                out[f"blocks.{i}.{k_}"] = c.state[f"blocks.{i}.{k_}"]
        out[f"blocks.{i}.gamma_1"] = out[f"blocks.{i}.gamma_2"] = torch.ones(a.embed_dim)
    out.update({k: c.state[k] for k in ("norm.weight", "norm.bias") if k in c.state})
    return {k: _f32(v) for k, v in out.items()}


def eva_kwargs(c: CanonicalViT, grid) -> tuple[str, dict]:
    """``timm.create_model`` name and keyword arguments for :func:`eva_state` (plain values, for ``meta``)."""
    a = c.arch
    if c.rope is None or c.rope["rule"] != "dinov3" or c.rope["coords"] != "normalized":
        raise ConversionError(
            f"this source's 2-D RoPE ({c.rope}) has no timm equivalent: timm holds RoPE only as DINOv3's (rule "
            "dinov3, coordinates normalised per axis); convert to --target detectron2 or mmseg, whose project "
            "backbones apply it"
        )
    name = TIMM_DINOV3_MODELS.get(a.embed_dim, "vit_small_patch16_dinov3_qkvb")
    kw = dict(img_size=[int(grid[0]) * a.patch_size, int(grid[1]) * a.patch_size], patch_size=a.patch_size,
              embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads, mlp_ratio=a.mlp_ratio,
              num_reg_tokens=c.num_registers, rope_temperature=float(c.rope["base"]), init_values=1.0,
              class_token=c.cls_token is not None, num_classes=0, global_pool="token")  # fmt: skip
    return name, kw


def _write_timm_eva(c: CanonicalViT, grid) -> WriteResult:
    name, kw = eva_kwargs(c, grid)
    if abs(c.arch.norm_eps - 1e-5) > 1e-12:
        raise ConversionError(f"timm's DINOv3 models use LayerNorm eps 1e-5; this source has {c.arch.norm_eps:g}")
    out = _TargetState()
    for k, v in eva_state(c).items():
        out.state[k] = v
        out.mapped.append((k, k))
    out.notes.append(f"RoPE (DINOv3 rule): timm.create_model({name!r}, **meta['timm_kwargs'])")
    meta = _base_meta(c, "timm", grid)
    meta.update(num_register_tokens=c.num_registers, cls_token_kept=c.cls_token is not None,
                final_norm=c.has_final_norm, timm_model=name, timm_kwargs=kw)  # fmt: skip
    return out.result("state_dict", meta)


def write_timm(c: CanonicalViT, grid, drop_registers: bool = False, keep_tokens: bool = False, **_) -> WriteResult:
    """timm ``VisionTransformer`` state dict (registers kept unless ``--drop-registers``); a DINOv3-rule RoPE
    source becomes timm's DINOv3 ``Eva`` model instead."""
    gh, gw = _check_ready(c, grid)
    if c.rope is not None:
        return _write_timm_eva(c, (gh, gw))
    keep_regs = bool(c.num_registers) and not drop_registers
    out = _TargetState()
    out.put_patch_embed(c, "patch_embed.proj")
    if c.cls_token is not None:
        out.put("cls_token", "cls_token", c.cls_token)
        pos = _pos_embed(c, (gh, gw), extra_zero_slots=c.num_registers if keep_regs else 0)
    else:
        patch = patch_pos_at(c, (gh, gw))
        zeros = torch.zeros(1, c.num_registers if keep_regs else 0, patch.shape[-1])
        pos = torch.cat([zeros, patch], dim=1)
    if keep_regs:
        out.put("reg_token", "reg_token", c.reg_token)
    elif c.num_registers:
        out.dropped.append(("reg_token", "register tokens dropped (--drop-registers)"))
    out.put("pos", "pos_embed", pos)
    out.put_blocks(c, SAME_BLOCK_KEYS)
    if c.has_final_norm:
        out.put("norm.weight", "norm.weight", c.state["norm.weight"])
        out.put("norm.bias", "norm.bias", c.state["norm.bias"])
    if c.arch.norm_eps != 1e-6:
        out.notes.append(f"norm_eps={c.arch.norm_eps}: build timm with norm_layer=partial(nn.LayerNorm, eps=...)")
    meta = _base_meta(c, "timm", (gh, gw))
    meta.update(
        num_register_tokens=c.num_registers if keep_regs else 0,
        cls_token_kept=c.cls_token is not None,
        final_norm=c.has_final_norm,
        timm_kwargs=timm_kwargs(c, (gh, gw), keep_regs),
    )
    return out.result("state_dict", meta)


WRITERS = {"detectron2": write_detectron2, "mmseg": write_mmseg, "timm": write_timm}
