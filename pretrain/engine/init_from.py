"""Continued pretraining: start the student and teacher backbones from a checkpoint (``model.init_from``).

Any checkpoint ``tools/convert_ckpt.py`` reads (ours, DINOv2, DINOv3, timm, MAE/iBOT/DINO, and what the converter
knows of their semantics, docs/protocols.md §1) is read into the converter's canonical ViT, then written into
every :class:`~pretrain.models.vit.VisionTransformer` of the method (the student's and the EMA teacher's
backbones; docs/usage.md "Continued pretraining"):

- the patch kernel is resampled to ``model.patch_size`` (timm ``resample_patch_embed``, as the converter does);
- blocks, final norm, CLS and register tokens are copied; LayerScale is copied, folded into the projections when
  the model has none, or set to 1 when the source has none (exact either way);
- positions: with the field on, the field starts from the source's ``pos_embed`` resized over the whole virtual
  image to ``pos_field.size`` by the source's own rule (or from the source's field); with a learned ``pos_embed``
  it is resized to ``crops.global_size / patch``; the CLS position is kept. RoPE sources need a RoPE model with
  the same rule;
- ``mask_token``, ``posmask_token`` and every head keep their fresh initialisation.

The architecture (width, depth, heads, MLP, registers) must match the config; a mismatch is an error naming it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pretrain.models.position_field import resize_pos_grid
from pretrain.models.vit import VisionTransformer

logger = logging.getLogger(__name__)


class InitFromError(ValueError):
    """``model.init_from`` cannot be applied; the message says why."""


def read_source(path: str, model: VisionTransformer):
    """The checkpoint as the converter's canonical ViT at the model's patch size (LayerScale not folded)."""
    from transfer.convert.canonical import ConversionError, resample_patch_size
    from transfer.convert.readers import ReadOptions, load_file, read_checkpoint

    try:
        obj = load_file(path)
        try:  # heads are not in the weights: the config's, unless they cannot fit (then the arch check names it)
            c, _ = read_checkpoint(obj, ReadOptions(num_heads=model.cfg.num_heads))
        except ConversionError:
            c, _ = read_checkpoint(obj, ReadOptions(num_heads=1))  # only to name the mismatch below
            _check_arch(c, model)
            raise
        return resample_patch_size(c, model.patch_size)
    except ConversionError as e:
        raise InitFromError(f"model.init_from={path}: {e}") from None


def _check_arch(c, model: VisionTransformer) -> None:
    a, m = c.arch, model.cfg
    ours = (m.embed_dim, m.depth, m.num_heads, int(round(m.embed_dim * m.mlp_ratio)), m.num_register_tokens)
    theirs = (a.embed_dim, a.depth, a.num_heads, a.mlp_hidden, c.num_registers)
    if ours != theirs:
        names = ("embed_dim", "depth", "num_heads", "mlp hidden", "registers")
        diff = ", ".join(f"{n}: config {o} vs checkpoint {t}" for n, o, t in zip(names, ours, theirs) if o != t)
        raise InitFromError(f"the checkpoint's architecture differs from model.arch={m.arch}: {diff}")
    if c.rope is not None and not (m.rope and (m.rope_rule, float(m.rope_base)) == (c.rope["rule"], c.rope["base"])):
        raise InitFromError(f"the checkpoint uses 2-D RoPE {c.rope}; the model must use the same rule and base")
    if c.rope is None and m.rope:
        raise InitFromError("the model uses RoPE but the checkpoint has an additive position embedding")


def _blocks(c, model: VisionTransformer) -> dict:
    """Block tensors in our names (timm's), LayerScale reconciled with the model's."""
    from transfer.convert.canonical import fold_layerscale

    has_ls = model.cfg.layerscale is not None
    src = c if (has_ls or not c.has_layerscale) else fold_layerscale(c)
    out = {k: v for k, v in src.state.items() if k.startswith("blocks.") or k.startswith("norm.")}
    if has_ls and not c.has_layerscale:
        for i in range(c.arch.depth):
            for ls in ("ls1", "ls2"):
                out[f"blocks.{i}.{ls}.gamma"] = torch.ones(c.arch.embed_dim)
    return out


def _positions(c, model: VisionTransformer) -> tuple[dict, str]:
    """Position tensors for the model's position kind, and what was done (for the log)."""
    cfg, d = model.cfg, model.embed_dim
    cls_pos = c.cls_pos if c.cls_pos is not None else torch.zeros(1, 1, d)
    if c.rope is not None:
        return {}, f"RoPE ({c.rope['rule']}, base {c.rope['base']:g}) as in the checkpoint"
    grid, what = (c.pos_field, "position field") if c.pos_field is not None else (c.pos_grid, "pos_embed")
    rule = "size" if c.pos_field is not None else c.pos_interpolation
    src = f"{what} {grid.shape[2]}x{grid.shape[3]}"
    if cfg.pos_field:
        size = tuple(cfg.pos_field_size)
        field = resize_pos_grid(grid.float(), size, rule)
        desc = f"position field {size[0]}x{size[1]} from the checkpoint's {src} over the whole virtual image"
        return {"pos_field.field": field, "cls_pos_embed": cls_pos}, f"{desc} (rule {rule!r})"
    if cfg.pos_embed_type == "learned":
        n = cfg.img_size // cfg.patch_size
        patch = resize_pos_grid(grid.float(), (n, n), rule).flatten(2).transpose(1, 2)
        return {"pos_embed": torch.cat([cls_pos, patch], 1)}, f"pos_embed {n}x{n} from the checkpoint's {src}"
    if cfg.pos_embed_type == "crop_sincos":
        return {"cls_pos_embed": cls_pos}, f"fixed crop-tied sin-cos (the checkpoint's {src} is not used)"
    return {}, f"the model's fixed {cfg.pos_embed_type} positions (the checkpoint's {src} is not used)"


def backbone_state(c, model: VisionTransformer) -> tuple[dict, str]:
    """Our ViT's tensors from the canonical source (everything except the mask tokens) and a position note."""
    _check_arch(c, model)
    state = _blocks(c, model)
    state.update({k: c.state[k] for k in ("patch_embed.proj.weight", "patch_embed.proj.bias")})
    state["cls_token"] = c.cls_token if c.cls_token is not None else torch.zeros(1, 1, model.embed_dim)
    if c.num_registers:
        state["reg_token"] = c.reg_token
    pos, note = _positions(c, model)
    state.update(pos)
    return state, note


def _load(vit: VisionTransformer, state: dict) -> None:
    own = vit.state_dict()
    params = {n for n, _ in vit.named_parameters()}
    missing = [k for k in own if k in params and k not in state and k not in ("mask_token", "posmask_token")]
    if missing:
        raise InitFromError(f"the checkpoint gives no value for {missing[:8]}")
    with torch.no_grad():
        for k, v in state.items():
            if k not in own:
                raise InitFromError(f"internal: {k!r} is not a tensor of our ViT")
            if own[k].shape != v.shape:
                raise InitFromError(f"{k}: checkpoint shape {tuple(v.shape)} vs model {tuple(own[k].shape)}")
            own[k].copy_(v.to(own[k].dtype))


def init_backbones_from(method: nn.Module, path: str) -> list[str]:
    """Write the checkpoint at ``path`` into every ViT backbone of ``method`` (student and teacher); returns the
    log lines that say what was done."""
    vits = [(n, m) for n, m in method.named_modules() if isinstance(m, VisionTransformer)]
    if not vits:
        raise InitFromError(f"the method {type(method).__name__} has no ViT backbone to initialise")
    c = read_source(path, vits[0][1])
    state, pos_note = backbone_state(c, vits[0][1])
    for _, vit in vits:
        _load(vit, state)
    names = ", ".join(n for n, _ in vits)
    return [
        f"model.init_from: {path} (format {c.source_format}) -> {names}; heads and mask tokens start fresh",
        f"model.init_from: positions: {pos_note}",
        *[f"model.init_from: {n}" for n in c.notes if "patch size" in n or "registers" in n],
    ]
