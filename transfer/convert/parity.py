"""Numeric parity: the converted weights, loaded into the target framework's own backbone, reproduce the source.

The check runs on a random image at the target size (``grid * patch``), in fp32, and compares patch features:

- ``detectron2``: ``detectron2.modeling.ViT`` built from :func:`transfer.vitdet.plain_vit.plain_vit_kwargs`
  (``window_size=0``, ``use_rel_pos=False``, ``pretrain_img_size = grid * patch``,
  ``pretrain_use_cls_token=True``), output ``last_feat``, against the source run WITHOUT CLS and register tokens
  (patch tokens + positions only), last block output before the final norm: exactly what ViTDet computes from
  these weights.
- ``mmseg``: ``mmseg.models.backbones.VisionTransformer`` (``final_norm``, ``with_cls_token``, ``patch_bias=True``,
  LN eps from the source) output patch map, against the source's final-normed patch tokens with the CLS token
  (and without registers, which MMSeg cannot hold: only reachable with ``--drop-registers``).
- ``timm``: timm ``VisionTransformer(**meta["timm_kwargs"])`` ``forward_features`` patch tokens against the full
  source (CLS and registers kept), final-normed.

The source reference: for our checkpoints the real ``pretrain.models.VisionTransformer`` loaded (strictly) from
the source state dict; for DINOv2/timm/MAE sources a timm ``VisionTransformer`` built from the un-folded source
weights (LayerScale as ``init_values``) — for DINOv2 after resampling the kernel to the target patch size, since
that resampled model is what is transferred. Grid position embeddings are resized by the models' own rule
(``pretrain.models.position_field.interpolate_pos_embed``: bicubic, no antialias), fields sampled by
``PositionField``.

A RoPE source (docs/positions.md) is checked against the project's backbones that apply RoPE, since the
libraries' own cannot: :class:`transfer.vitdet.backbone.SDPAViT` (``use_rope``) for detectron2 and
:class:`transfer.segmenter.rope_vit.RoPEVisionTransformer` for MMSeg; the source runs its own RoPE at the
target grid's integer coordinates.

Pass criterion: ``max|target - reference| <= tol * max(1, max|reference|)`` (tol 1e-4): absolute for features of
order one, relative for checkpoints with large activations (real DINOv2 tokens reach the hundreds).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from transfer.vitdet.plain_vit import plain_vit_kwargs

from .canonical import CanonicalViT, ConversionError
from .writers import D2_KEY_PREFIX, int_if_whole


@dataclass
class ParityResult:
    target: str
    max_abs_diff: float
    ref_scale: float
    tol: float
    seconds: float
    reference: str

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tol * max(1.0, self.ref_scale)

    def describe(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{self.target} backbone vs {self.reference}: max abs diff {self.max_abs_diff:.3g} "
            f"(max |ref| {self.ref_scale:.3g}, tol {self.tol:g} x max(1, max|ref|)) {verdict} [{self.seconds:.1f}s]"
        )


# ----------------------------------------------------------------------------------------------------------------
# source references: image -> patch tokens (B, N, D)


def _ours_reference(c: CanonicalViT, with_cls: bool, with_regs: bool, final_norm: bool):
    from pretrain.models.vit import ViTConfig, build_vit

    cfg = dict(c.source_meta["vit_config"])
    cfg["drop_path_rate"] = 0.0
    model = build_vit(ViTConfig(**cfg)).eval()
    missing, unexpected = model.load_state_dict(c.source_meta["source_state"], strict=False)
    missing = [k for k in missing if k not in ("mask_token", "posmask_token")]  # unused at inference
    if missing or unexpected:
        raise ConversionError(f"source does not load into our ViT: missing {missing[:5]}, unexpected {unexpected[:5]}")
    r = model.num_prefix_tokens

    @torch.no_grad()
    def forward(img):
        seq, grid = model.prepare_tokens(img)  # [CLS + cls_pos, registers, patches + field/pos_embed]
        prefix = ([seq[:, :1]] if with_cls else []) + ([seq[:, 1:r]] if with_regs and r > 1 else [])
        x = torch.cat(prefix + [seq[:, r:]], dim=1)
        angles = model.attention_angles(grid)  # RoPE at the input's grid; None without
        n_prefix = sum(t.shape[1] for t in prefix)
        for blk in model.blocks:
            x = blk(x, angles, n_prefix)
        if final_norm:
            x = model.norm(x)
        return x[:, sum(t.shape[1] for t in prefix) :]

    return forward, "source (our ViT)"


def _timm_reference(c: CanonicalViT, grid, with_cls: bool, with_regs: bool, final_norm: bool):
    from timm.models.vision_transformer import VisionTransformer

    from pretrain.models.position_field import PositionField, interpolate_pos_embed

    a = c.arch
    gh, gw = grid
    use_cls = with_cls and c.cls_token is not None
    regs = c.num_registers if with_regs else 0
    model = VisionTransformer(
        img_size=(gh * a.patch_size, gw * a.patch_size),
        patch_size=a.patch_size,
        in_chans=a.in_chans,
        embed_dim=a.embed_dim,
        depth=a.depth,
        num_heads=a.num_heads,
        mlp_ratio=a.mlp_ratio,
        qkv_bias=a.qkv_bias,
        init_values=1.0 if c.has_layerscale else None,
        class_token=use_cls,
        reg_tokens=regs,
        no_embed_class=True,  # positions added to patches only; the CLS position is folded into the CLS token
        num_classes=0,
        global_pool="",
        fc_norm=False,
        final_norm=c.has_final_norm,
        norm_layer=partial(nn.LayerNorm, eps=a.norm_eps),
        weight_init="skip",
    ).eval()
    d = a.embed_dim
    with torch.no_grad():
        if c.pos_field is not None:
            pf = PositionField(d, tuple(c.pos_field.shape[2:]))
            pf.field.copy_(c.pos_field.float())
            pos = pf(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, (gh, gw))
        else:
            flat = c.pos_grid.float().flatten(2).transpose(1, 2)
            pos = interpolate_pos_embed(flat, (gh, gw), num_prefix=0, rule=c.pos_interpolation)
    sd = {k: v.float() for k, v in c.state.items()}
    # canonical names are timm's ("ls1.gamma" included)
    sd["pos_embed"] = pos.reshape(1, gh * gw, d)
    if use_cls:
        cls_pos = c.cls_pos.float() if c.cls_pos is not None else 0.0
        sd["cls_token"] = c.cls_token.float() + cls_pos
    if regs:
        sd["reg_token"] = c.reg_token.float()
    model.load_state_dict(sd, strict=True)
    n_prefix = model.num_prefix_tokens

    @torch.no_grad()
    def forward(img):
        x = model.patch_embed(img)
        x = model._pos_embed(x)
        x = model.blocks(x)
        if final_norm:
            x = model.norm(x)
        return x[:, n_prefix:]

    return forward, f"source ({c.source_format}, rebuilt as a timm ViT at patch {a.patch_size})"


def _eva_reference(c: CanonicalViT, grid, with_cls: bool, with_regs: bool, final_norm: bool):
    """A DINOv3 source as timm's DINOv3 model (``Eva``, rotate-half RoPE, which reproduces the official model's
    outputs: tests/transfer/convert/test_official.py), optionally without CLS / registers / final norm."""
    import timm

    from .canonical import fold_layerscale
    from .writers import eva_kwargs, eva_state

    folded = fold_layerscale(c)
    name, kw = eva_kwargs(folded, grid)
    use_cls = with_cls and c.cls_token is not None
    regs = c.num_registers if with_regs else 0
    kw.update(class_token=use_cls, num_reg_tokens=regs, global_pool="avg")
    model = timm.create_model(name, pretrained=False, norm_layer=partial(nn.LayerNorm, eps=c.arch.norm_eps), **kw)
    sd = eva_state(folded)
    if not use_cls:
        sd.pop("cls_token", None)
    if not regs:
        sd.pop("reg_token", None)
    model.eval().load_state_dict(sd, strict=True)
    n_prefix = model.num_prefix_tokens

    @torch.no_grad()
    def forward(img):
        x, rot = model._pos_embed(model.patch_embed(img))
        x = model.norm_pre(x)
        for blk in model.blocks:
            x = blk(x, rope=rot)
        if final_norm:
            x = model.norm(x)
        return x[:, n_prefix:]

    return forward, f"source ({c.source_format}, as timm's DINOv3 model {name})"


def source_reference(c: CanonicalViT, grid, with_cls: bool, with_regs: bool, final_norm: bool):
    """A function image -> source patch tokens ``(B, N, D)``, and a description of what it is.

    ``c`` must be the un-folded canonical model at the target patch size (after any kernel resampling).
    """
    final_norm = final_norm and c.has_final_norm
    vit_cfg = c.source_meta.get("vit_config") if c.source_format == "ours" else None
    if vit_cfg is not None and int(vit_cfg.get("patch_size", 16)) == c.arch.patch_size:
        return _ours_reference(c, with_cls, with_regs, final_norm)
    if c.rope is not None and c.source_format == "dinov3":
        return _eva_reference(c, grid, with_cls, with_regs, final_norm)
    if c.rope is not None:
        raise ConversionError(
            "a RoPE source is checked against its own ViT at its own patch size: convert it with --patch-size "
            f"{(vit_cfg or {}).get('patch_size', '<the source patch size>')}"
        )
    return _timm_reference(c, grid, with_cls, with_regs, final_norm)


# ----------------------------------------------------------------------------------------------------------------
# target backbones built by the target libraries themselves


def _target_class(target: str, module: str, name: str, package: str):
    """The backbone class a target library provides; a :class:`ConversionError` naming the package if missing."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConversionError(f"the {target} check needs {package} ({e}); install it or pass --no-check") from None


def _rope_kwargs(meta: dict) -> dict:
    r = meta["rope"]
    return dict(rope_base=float(r["base"]), rope_rule=str(r["rule"]), rope_coords=str(r["coords"]))


def build_detectron2(state: dict, meta: dict):
    if meta.get("rope"):
        vit_cls = _target_class("detectron2", "transfer.vitdet.backbone", "SDPAViT", "detectron2")
    else:
        vit_cls = _target_class("detectron2", "detectron2.modeling", "ViT", "detectron2")
    gh, gw = meta["grid"]
    p = meta["patch_size"]
    kwargs = plain_vit_kwargs(
        img_size=gh * p,
        patch_size=p,
        embed_dim=meta["embed_dim"],
        depth=meta["depth"],
        num_heads=meta["num_heads"],
        mlp_ratio=meta["mlp_ratio"],
        norm_eps=meta["norm_eps"],
    )
    if meta.get("rope"):
        kwargs.update(use_abs_pos=False, pretrain_use_cls_token=False, use_rope=True, **_rope_kwargs(meta))
    prefix = meta.get("key_prefix", D2_KEY_PREFIX)
    token_keys = {prefix + "cls_token", prefix + "reg_token"}  # only for the project's token-keeping backbone
    tokens = _d2_tokens_kept(meta)
    if tokens:
        vit_cls = _target_class("detectron2", "transfer.vitdet.backbone", "SDPAViT", "detectron2")
        kwargs.update(use_cls_token=bool(meta.get("cls_token_kept")), num_register_tokens=meta["num_register_tokens"])
        token_keys = set()
    model = vit_cls(**kwargs).eval()
    sd = {k[len(prefix) :]: v for k, v in state.items() if k not in token_keys}
    _load_strict(model, sd, "detectron2's ViT")

    @torch.no_grad()
    def forward(img):
        out = model(img)[model._out_features[0]]  # (B, D, gh, gw)
        return out.flatten(2).transpose(1, 2)

    return forward


def _d2_tokens_kept(meta: dict) -> bool:
    """Whether a detectron2-target file keeps CLS / registers for the project's SDPA backbone (--keep-tokens)."""
    return bool(meta.get("cls_token_kept") or meta.get("num_register_tokens"))


def build_mmseg(state: dict, meta: dict):
    extra = {}
    if meta.get("rope"):
        vit_cls = _target_class("mmseg", "transfer.segmenter.rope_vit", "RoPEVisionTransformer", "mmsegmentation")
        extra = dict(_rope_kwargs(meta), num_register_tokens=int(meta.get("num_register_tokens", 0)))
    elif meta.get("num_register_tokens"):
        vit_cls = _target_class(
            "mmseg", "transfer.segmenter.register_vit", "RegisterVisionTransformer", "mmsegmentation"
        )
        extra = dict(num_register_tokens=int(meta["num_register_tokens"]))
    else:
        vit_cls = _target_class("mmseg", "mmseg.models.backbones", "VisionTransformer", "mmsegmentation")
    gh, gw = meta["grid"]
    p = meta["patch_size"]
    model = vit_cls(
        **extra,
        img_size=(gh * p, gw * p),
        patch_size=p,
        embed_dims=meta["embed_dim"],
        num_layers=meta["depth"],
        num_heads=meta["num_heads"],
        mlp_ratio=int_if_whole(meta["mlp_ratio"]),
        qkv_bias=True,
        final_norm=meta["final_norm"],
        with_cls_token=meta["with_cls_token"],
        patch_bias=True,
        norm_cfg=dict(type="LN", eps=meta["norm_eps"]),
        interpolate_mode="bicubic",
        output_cls_token=False,
        drop_path_rate=0.0,
    )
    model.eval()  # mmseg's train() returns None: no chaining
    _load_strict(model, state, "MMSeg's VisionTransformer")

    @torch.no_grad()
    def forward(img):
        out = model(img)[-1]  # (B, D, gh, gw)
        return out.flatten(2).transpose(1, 2)

    return forward


def build_timm(state: dict, meta: dict):
    from timm.models.vision_transformer import VisionTransformer

    kw = dict(meta["timm_kwargs"])
    if meta.get("timm_model"):  # timm's DINOv3 (Eva) for a DINOv3-rule RoPE source
        import timm

        model = timm.create_model(meta["timm_model"], pretrained=False, **kw).eval()
    else:
        model = VisionTransformer(**kw, norm_layer=partial(nn.LayerNorm, eps=meta["norm_eps"]), weight_init="skip")
        model.eval()
    _load_strict(model, state, "timm's VisionTransformer")

    @torch.no_grad()
    def forward(img):
        return model.forward_features(img)[:, model.num_prefix_tokens :]

    return forward


def _load_strict(model: nn.Module, state: dict, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConversionError(f"converted weights do not load into {what}: {str(e)[:600]}") from None


TARGET_BUILDERS = {"detectron2": build_detectron2, "mmseg": build_mmseg, "timm": build_timm}
# (with_cls, with_regs, final_norm) of the reference for each target
REFERENCE_MODE = {"detectron2": (False, False, False), "mmseg": (True, False, True), "timm": (True, True, True)}


def _mode_desc(with_cls: bool, with_regs: bool, final_norm: bool) -> str:
    cls = "CLS kept" if with_cls else "no CLS"
    regs = "registers kept" if with_regs else "no registers"
    return f"{cls}, {regs}, " + ("final-normed" if final_norm else "before the final norm")


def check_parity(
    target: str, c_unfolded: CanonicalViT, state: dict, meta: dict, tol: float = 1e-4, seed: int = 0, batch: int = 1
) -> ParityResult:
    """Build the target backbone from ``state``/``meta`` and compare it with the source on a random image."""
    t0 = time.time()
    gh, gw = meta["grid"]
    p = meta["patch_size"]
    with_cls, with_regs, final_norm = REFERENCE_MODE[target]
    if target in ("timm", "mmseg"):
        with_regs = meta["num_register_tokens"] > 0
    if target == "detectron2" and _d2_tokens_kept(meta):  # the SDPA backbone with CLS / registers in the sequence
        with_cls, with_regs = bool(meta.get("cls_token_kept")), meta["num_register_tokens"] > 0
    ref_fn, ref_desc = source_reference(c_unfolded, (gh, gw), with_cls, with_regs, final_norm)
    tgt_fn = TARGET_BUILDERS[target](state, meta)
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, c_unfolded.arch.in_chans, gh * p, gw * p, generator=gen)
    with torch.no_grad():
        ref = ref_fn(img).float()
        out = tgt_fn(img).float()
    if ref.shape != out.shape:
        raise ConversionError(f"parity check: target output {tuple(out.shape)} vs source {tuple(ref.shape)}")
    return ParityResult(
        target=target,
        max_abs_diff=float((ref - out).abs().max()),
        ref_scale=float(ref.abs().max()),
        tol=tol,
        seconds=time.time() - t0,
        reference=f"{ref_desc} ({_mode_desc(with_cls, with_regs, final_norm)}) on "
        f"{batch}x{img.shape[1]}x{gh * p}x{gw * p}",
    )
