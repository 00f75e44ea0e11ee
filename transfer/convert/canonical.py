"""The canonical in-memory ViT that every reader produces and every writer consumes (docs/protocols.md §1).

A :class:`CanonicalViT` is a timm-style plain ViT, independent of where it came from:

- ``state``: timm-style tensors ``patch_embed.proj.{weight,bias}``, ``blocks.<i>.{norm1, attn.qkv, attn.proj,
  norm2, mlp.fc1, mlp.fc2}.{weight,bias}``, optionally ``blocks.<i>.ls{1,2}.gamma`` (LayerScale, until
  :func:`fold_layerscale` removes them) and ``norm.{weight,bias}`` (the final norm, absent if the source has none);
- ``cls_token`` ``(1, 1, D)`` and ``cls_pos`` ``(1, 1, D)`` (the CLS token's own position embedding; None when
  the source adds none, e.g. timm ``no_embed_class``), ``reg_token`` ``(1, R, D)`` (registers get no position);
- the patch position source, exactly one of ``pos_field`` ``(1, D, h, w)`` (our crop-tied field, sampled over the
  whole virtual image), ``pos_grid`` ``(1, D, gh, gw)`` (a learned/fixed grid ``pos_embed`` without prefix slots)
  or ``rope`` (continuous 2-D RoPE in the attention, ``{"rule", "base", "coords"}``, docs/positions.md: no tensor;
  only targets whose backbone applies the same RoPE can take it);
- ``arch``: what the targets need to rebuild the network (:class:`ArchInfo`).

Position materialisation happens in ONE resampling, directly at the target grid (:func:`patch_pos_at`):
a field is sampled bilinearly at the patch centres (:meth:`PositionField.materialise`, the model's own code);
a grid is resized once with ``F.interpolate(mode="bicubic", align_corners=False, antialias=False)``, by output size
or by DINOv2's scale factor with its 0.1 offset (``pos_interpolation``; the rule our own field-off model records in
its metadata, and the same function, ``resize_pos_grid``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field

import torch

# Standard ViT widths -> heads. Heads cannot be read from the weights (qkv is (3D, D) for any head count).
HEADS_BY_EMBED_DIM = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1536: 24}

BLOCK_PARAMS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)
OPTIONAL_BLOCK_PARAMS = ("attn.qkv.bias", "ls1.gamma", "ls2.gamma")
# What every block of a finished canonical ViT holds: LayerScale folded away, a qkv bias always present (zeros
# written by the readers when the source has none), so writers can emit it for every target.
CANONICAL_BLOCK_PARAMS = BLOCK_PARAMS + ("attn.qkv.bias",)


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the key or the problem."""


@dataclass
class ArchInfo:
    """Architecture of a plain ViT as far as conversion needs it."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    mlp_ratio: float
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    in_chans: int = 3
    num_heads_source: str = "meta"  # where num_heads came from: meta | flag | table

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.embed_dim * self.mlp_ratio))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CanonicalViT:
    """A source ViT in canonical form; see the module docstring."""

    arch: ArchInfo
    state: dict
    cls_token: torch.Tensor | None = None
    cls_pos: torch.Tensor | None = None
    reg_token: torch.Tensor | None = None
    pos_field: torch.Tensor | None = None
    pos_grid: torch.Tensor | None = None
    pos_interpolation: str = "size"  # how pos_grid is resampled: size | dinov2 (resize_pos_grid)
    rope: dict | None = None  # 2-D RoPE: {"rule", "base", "coords"} (pretrain/models/rope.py)
    source_format: str = "unknown"
    mean: list | None = None
    std: list | None = None
    # bookkeeping for the printed summary
    origin: dict = field(default_factory=dict)  # canonical name -> source key(s) it came from
    source_keys: list = field(default_factory=list)  # every tensor key of the source state dict
    dropped: list = field(default_factory=list)  # (source key, reason)
    notes: list = field(default_factory=list)
    layerscale_folded: bool = False
    source_meta: dict = field(default_factory=dict)

    @property
    def num_registers(self) -> int:
        return 0 if self.reg_token is None else int(self.reg_token.shape[1])

    @property
    def has_layerscale(self) -> bool:
        return any(k.endswith(".ls1.gamma") or k.endswith(".ls2.gamma") for k in self.state)

    @property
    def has_final_norm(self) -> bool:
        return "norm.weight" in self.state

    def src(self, name: str) -> str:
        """The source key a canonical entry came from (for error messages and the summary)."""
        return self.origin.get(name, name)

    def copy(self) -> CanonicalViT:
        """A copy with its own containers; tensors are shared (nothing here modifies a tensor in place)."""
        return dataclasses.replace(
            self,
            arch=dataclasses.replace(self.arch),
            state=dict(self.state),
            origin=dict(self.origin),
            source_keys=list(self.source_keys),
            dropped=list(self.dropped),
            notes=list(self.notes),
            source_meta=dict(self.source_meta),
        )

    def num_params(self) -> int:
        tensors = list(self.state.values()) + [
            t for t in (self.cls_token, self.cls_pos, self.reg_token, self.pos_field, self.pos_grid) if t is not None
        ]
        return int(sum(t.numel() for t in tensors))


def infer_num_heads(embed_dim: int, meta_heads: int | None = None, flag_heads: int | None = None) -> tuple[int, str]:
    """``num_heads`` by explicit rule: ``--num-heads`` flag > checkpoint metadata > :data:`HEADS_BY_EMBED_DIM`."""
    if flag_heads is not None:
        heads, how = int(flag_heads), "flag"
    elif meta_heads is not None:
        heads, how = int(meta_heads), "meta"
    elif embed_dim in HEADS_BY_EMBED_DIM:
        heads, how = HEADS_BY_EMBED_DIM[embed_dim], "table"
    else:
        table = ", ".join(f"{d}->{h}" for d, h in HEADS_BY_EMBED_DIM.items())
        raise ConversionError(
            f"cannot infer num_heads for embed_dim {embed_dim} (not in the standard table {table}); pass --num-heads"
        )
    if heads <= 0 or embed_dim % heads:
        raise ConversionError(f"num_heads {heads} ({how}) does not divide embed_dim {embed_dim}")
    return heads, how


def infer_depth(state: dict) -> int:
    """Number of blocks from ``blocks.<i>.`` keys (indices must start at 0; gaps show up as missing tensors)."""
    idx = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not idx:
        raise ConversionError("no transformer blocks found (no 'blocks.<i>.' keys)")
    return max(idx) + 1


def _expect(c: CanonicalViT, name: str, tensor, shape: tuple) -> None:
    if tensor is None:
        raise ConversionError(f"missing tensor {c.src(name)!r} (expected shape {tuple(shape)})")
    if not isinstance(tensor, torch.Tensor):
        raise ConversionError(f"{c.src(name)!r} is a {type(tensor).__name__}, expected a tensor")
    if tuple(tensor.shape) != tuple(shape):
        raise ConversionError(f"wrong shape for {c.src(name)!r}: got {tuple(tensor.shape)}, expected {tuple(shape)}")


def _block_shapes(d: int, h: int) -> dict:
    """Shape of every block parameter for width ``d`` and MLP hidden size ``h``."""
    return {
        "norm1.weight": (d,),
        "norm1.bias": (d,),
        "attn.qkv.weight": (3 * d, d),
        "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d),
        "attn.proj.bias": (d,),
        "norm2.weight": (d,),
        "norm2.bias": (d,),
        "mlp.fc1.weight": (h, d),
        "mlp.fc1.bias": (h,),
        "mlp.fc2.weight": (d, h),
        "mlp.fc2.bias": (d,),
        "ls1.gamma": (d,),
        "ls2.gamma": (d,),
    }


def validate(c: CanonicalViT) -> None:
    """Check that every tensor the targets need is present with the shape the architecture implies."""
    a = c.arch
    d, p = a.embed_dim, a.patch_size
    st = c.state
    _expect(c, "patch_embed.proj.weight", st.get("patch_embed.proj.weight"), (d, a.in_chans, p, p))
    _expect(c, "patch_embed.proj.bias", st.get("patch_embed.proj.bias"), (d,))
    _validate_blocks(c)
    if c.has_final_norm or "norm.bias" in st:
        _expect(c, "norm.weight", st.get("norm.weight"), (d,))
        _expect(c, "norm.bias", st.get("norm.bias"), (d,))
    if c.cls_token is not None:
        _expect(c, "cls_token", c.cls_token, (1, 1, d))
    if c.cls_pos is not None:
        _expect(c, "cls_pos", c.cls_pos, (1, 1, d))
    if c.reg_token is not None:
        if c.reg_token.ndim != 3 or c.reg_token.shape[0] != 1 or c.reg_token.shape[2] != d:
            raise ConversionError(
                f"wrong shape for {c.src('reg_token')!r}: got {tuple(c.reg_token.shape)}, expected (1, R, {d})"
            )
    pos = _validate_position(c)
    for name, t in list(st.items()) + [("cls_token", c.cls_token), ("pos", pos)]:
        if t is not None and not torch.isfinite(t).all():
            raise ConversionError(f"non-finite values in {c.src(name)!r}")


def _validate_blocks(c: CanonicalViT) -> None:
    """Every block has every parameter (qkv bias and LayerScale where the model has them), none beyond depth."""
    a, st = c.arch, c.state
    shapes = _block_shapes(a.embed_dim, a.mlp_hidden)
    has_ls = c.has_layerscale
    for i in range(a.depth):
        for name, shape in shapes.items():
            key = f"blocks.{i}.{name}"
            if name == "attn.qkv.bias" and not a.qkv_bias:
                continue
            if name.startswith("ls") and not has_ls:
                continue
            _expect(c, key, st.get(key), shape)
    block_keys = [k for k in st if k.startswith("blocks.")]
    extra = [k for k in block_keys if int(k.split(".")[1]) >= a.depth]
    if extra:
        raise ConversionError(f"block keys beyond depth {a.depth}: {[c.src(k) for k in extra[:5]]}")


def _validate_position(c: CanonicalViT) -> torch.Tensor | None:
    """Exactly one patch position source, ``(1, D, h, w)`` (a field at least 2x2) or RoPE; returns the tensor."""
    d = c.arch.embed_dim
    if c.rope is not None:
        if c.pos_field is not None or c.pos_grid is not None:
            raise ConversionError("a RoPE model with an additive position embedding too: not supported")
        if (d // c.arch.num_heads) % 4:
            raise ConversionError(f"2-D RoPE needs a head dimension divisible by 4, got {d}/{c.arch.num_heads}")
        return None
    if (c.pos_field is None) == (c.pos_grid is None):
        raise ConversionError(
            "missing position embedding: the source has neither a position field ('pos_field.field') nor a 'pos_embed'"
            if c.pos_field is None
            else "both a position field and a pos_embed given"
        )
    pos, name = (c.pos_field, "pos_field") if c.pos_field is not None else (c.pos_grid, "pos_embed")
    if pos.ndim != 4 or pos.shape[0] != 1 or pos.shape[1] != d or min(pos.shape[2:]) < 1:
        raise ConversionError(f"wrong shape for {c.src(name)!r}: got {tuple(pos.shape)}, expected (1, {d}, h, w)")
    if c.pos_field is not None and min(pos.shape[2:]) < 2:
        raise ConversionError(f"position field {c.src(name)!r} must be at least 2x2, got {tuple(pos.shape[2:])}")
    return pos


def fold_layerscale(c: CanonicalViT) -> CanonicalViT:
    """Fold LayerScale into the preceding projections (exact): ``x + g * (W y + b) = x + (diag(g) W) y + g b``.

    ``ls1.gamma`` scales the rows of ``attn.proj.{weight,bias}``, ``ls2.gamma`` those of ``mlp.fc2.{weight,bias}``.
    Returns a new canonical model without ``ls*`` entries; the input is left untouched.
    """
    out = c.copy()
    if not c.has_layerscale:
        out.layerscale_folded = False
        return out
    st = out.state
    for i in range(c.arch.depth):
        for ls, proj in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            gamma = st.pop(f"blocks.{i}.{ls}.gamma", None)
            if gamma is None:
                raise ConversionError(f"missing tensor {c.src(f'blocks.{i}.{ls}.gamma')!r} (other blocks have it)")
            g = gamma.to(torch.float64)
            w, b = st[f"blocks.{i}.{proj}.weight"], st[f"blocks.{i}.{proj}.bias"]
            st[f"blocks.{i}.{proj}.weight"] = (w.to(torch.float64) * g[:, None]).to(w.dtype)
            st[f"blocks.{i}.{proj}.bias"] = (b.to(torch.float64) * g).to(b.dtype)
    out.layerscale_folded = True
    return out


def resample_patch_size(c: CanonicalViT, new_patch: int) -> CanonicalViT:
    """Resample the patch-embedding kernel to ``new_patch`` (timm ``resample_patch_embed``: pseudo-inverse of the
    bicubic, antialiased resize, FlexiViT), e.g. DINOv2's 14 -> 16. The position grid keeps its token count."""
    if new_patch == c.arch.patch_size:
        return c
    from timm.layers import resample_patch_embed

    out = c.copy()
    w = out.state["patch_embed.proj.weight"]
    out.state["patch_embed.proj.weight"] = resample_patch_embed(
        w.float(), [new_patch, new_patch], interpolation="bicubic", antialias=True
    ).to(w.dtype)
    out.notes.append(
        f"patch size {c.arch.patch_size} -> {new_patch}: patch-embedding kernel resampled "
        "(timm.layers.resample_patch_embed, bicubic, antialias); the parity reference is this resampled model"
    )
    out.arch.patch_size = new_patch
    return out


def patch_pos_at(c: CanonicalViT, grid: tuple[int, int]) -> torch.Tensor:
    """Patch position embeddings at the target ``grid``, ``(1, gh*gw, D)``, in one resampling step."""
    gh, gw = int(grid[0]), int(grid[1])
    if c.pos_field is not None:
        from pretrain.models.position_field import PositionField

        f = c.pos_field.float()
        pf = PositionField(f.shape[1], tuple(f.shape[2:]))
        with torch.no_grad():
            pf.field.copy_(f)
            return pf.materialise((gh, gw))[None].detach().clone()
    from pretrain.models.position_field import resize_pos_grid

    g = resize_pos_grid(c.pos_grid.float(), (gh, gw), c.pos_interpolation)
    return g.flatten(2).transpose(1, 2).contiguous()


def rope_pair_permutation(head_dim: int, to: str = "pairs") -> torch.Tensor:
    """Channel order that turns one head's rotate-half RoPE layout (DINOv3, timm ``rope_rotate_half``: channel
    ``j`` pairs with ``j + D/2``) into our interleaved layout (channel ``2j`` pairs with ``2j + 1``,
    docs/positions.md), or back with ``to="half"``: ``new = old[perm]``."""
    half = head_dim // 2
    pairs = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)  # 0, h, 1, h+1, ...
    return pairs if to == "pairs" else torch.argsort(pairs)


def permute_qk_heads(weight: torch.Tensor, bias, num_heads: int, to: str = "pairs"):
    """Reorder the query and key channels of a fused ``(3D, D)`` qkv projection (and its bias) inside every head by
    :func:`rope_pair_permutation`. The same reorder on q and k leaves ``q . k`` unchanged, so with RoPE applied in
    the matching layout the attention is exactly the same (docs/positions.md); v is untouched."""
    d = weight.shape[1]
    perm = rope_pair_permutation(d // num_heads, to)
    idx = torch.cat([h * (d // num_heads) + perm for h in range(num_heads)])
    full = torch.cat([idx, idx + d, torch.arange(2 * d, 3 * d)])
    return weight[full], (bias[full] if bias is not None else None)


def pos_source_desc(c: CanonicalViT) -> str:
    if c.rope is not None:
        r = c.rope
        return f"2-D RoPE in the attention (rule {r['rule']}, base {r['base']:g}, coordinates {r['coords']})"
    if c.pos_field is not None:
        h, w = c.pos_field.shape[2:]
        return f"position field {h}x{w} sampled bilinearly at the patch centres over the whole virtual image"
    h, w = c.pos_grid.shape[2:]
    rule = POS_RULE_DESC.get(c.pos_interpolation, c.pos_interpolation)
    return f"pos_embed grid {h}x{w} (resized once: bicubic, align_corners=False, rule {c.pos_interpolation!r}: {rule})"


#: How each ``pos_interpolation`` rule resizes (pretrain.models.position_field.POS_INTERPOLATION_RULES).
POS_RULE_DESC = {
    "size": "by output size, no antialias",
    "dinov2": "DINOv2's scale factor (n + 0.1) / M, no antialias",
    "size_antialias": "by output size with antialias (DINOv2 register models, timm)",
}


def split_pos_embed(pos_embed: torch.Tensor, num_prefix_candidates: list[int]) -> tuple[int, torch.Tensor, tuple]:
    """Split a ``(1, L, D)`` pos_embed into prefix slots and a square patch grid.

    Tries the given prefix counts in order and takes the first one leaving a perfect square.
    Returns ``(num_prefix, prefix (1, P, D), (n, n))``.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ConversionError(f"wrong shape for 'pos_embed': got {tuple(pos_embed.shape)}, expected (1, L, D)")
    length = pos_embed.shape[1]
    for p in num_prefix_candidates:
        n = length - p
        side = math.isqrt(max(n, 0))
        if n > 0 and side * side == n:
            return p, pos_embed[:, :p], (side, side)
    raise ConversionError(
        f"cannot split 'pos_embed' of length {length} into {num_prefix_candidates} prefix slot(s) plus a square grid"
    )
