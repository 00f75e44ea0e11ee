"""One small interface over the backbones the analysis tools look at (:class:`BackboneAdapter`).

Two implementations:

- :class:`OursAdapter` wraps :class:`pretrain.models.VisionTransformer` (exported ``backbone.pth`` or a training
  checkpoint's teacher). Position embeddings at any input size come from the model itself (the field is sampled at
  the patch centres of the whole virtual image; a ``pos_embed`` model interpolates). It also supports the model's
  ``content_mask`` / ``pos_mask`` ([MASK] / [POSMASK]) arguments, which the position probe needs.
- :class:`TimmAdapter` wraps a timm ``VisionTransformer`` built from ``meta["timm_kwargs"]`` of the converter's
  timm writer, so every checkpoint ``transfer/convert`` reads (DINOv2, timm, MAE/iBOT/DINO) can be analysed. The
  conversion happens in memory (read -> fold LayerScale -> write timm at the analysis grid); the patch size is
  kept as it is (no kernel resampling), and ``dynamic_img_size=True`` lets other input sizes interpolate.

For the position-accuracy evaluator (:mod:`transfer.analysis.position_accuracy`) both also split the first block's
input into its parts (:meth:`BackboneAdapter.embed_parts`: prefix tokens with their positions, patch content
without position, patch positions) and run any token sequence built from them through the blocks and the final
norm (:meth:`BackboneAdapter.encode_sequence`); ours also hands over its [POSMASK] token
(:attr:`BackboneAdapter.position_mask_token`).

Both expose the token sequence ``[CLS, registers..., patches]``; ``tokens`` returns only the patch tokens (with the
final norm applied, as LocalRep and DINOv2's ``get_intermediate_layers(norm=True)`` do) and ``attentions`` returns
the full ``(B, H, T, T)`` softmax attention of every block, recomputed from ``qkv`` (timm's blocks use SDPA, which
never materialises the matrix). :func:`attention_block_forward` recomputes a whole block from that matrix, so the
attention that is analysed is exactly the one that produced the block's output (checked in the tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from pretrain.data.normalization import IMAGENET_MEAN, IMAGENET_STD


class AdapterError(ValueError):
    """A checkpoint cannot be wrapped, or an adapter is asked for something it cannot do."""


# ----------------------------------------------------------------------------------------------------------------
# block-level attention recomputation


def _rotate(q: torch.Tensor, k: torch.Tensor, angles, num_prefix: int):
    """``q, k`` ``(B, H, T, hd)`` with RoPE ``angles`` ``(B or 1, N, hd/2)`` applied to the tokens after the first
    ``num_prefix`` (:func:`pretrain.models.rope.rope_sdpa`'s rotation); unchanged without angles."""
    if angles is None:
        return q, k
    from pretrain.models.rope import apply_rope_after_prefix

    a = angles[:, None] if angles.dim() == 3 else angles
    return apply_rope_after_prefix(q, a, num_prefix), apply_rope_after_prefix(k, a, num_prefix)


def block_attention(blk: nn.Module, x: torch.Tensor, angles=None, num_prefix: int = 0) -> torch.Tensor:
    """Softmax attention ``(B, H, T, T)`` of timm block ``blk`` on its input sequence ``x`` ``(B, T, D)``.

    ``softmax(q k^T * scale)`` with ``q, k`` from ``blk.attn.qkv(blk.norm1(x))`` (after the attention's optional
    ``q_norm`` / ``k_norm``), exactly what timm's non-fused path computes; with RoPE ``angles``, ``q`` and ``k`` of
    the patch tokens rotated first, as :class:`pretrain.models.rope_block.RopeBlock` does.
    """
    attn_mod = blk.attn
    b, t, _ = x.shape
    h = attn_mod.num_heads
    qkv = attn_mod.qkv(blk.norm1(x)).reshape(b, t, 3, h, -1).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = _rotate(attn_mod.q_norm(q), attn_mod.k_norm(k), angles, num_prefix)
    return ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def attention_block_forward(blk: nn.Module, x: torch.Tensor, angles=None, num_prefix: int = 0):
    """Run timm block ``blk`` on ``x`` by hand, returning ``(output, attention)``; ``angles`` / ``num_prefix``: RoPE
    as in :func:`block_attention`.

    The output is computed from the explicit attention matrix (``attn @ v``, projection, LayerScale, residual, MLP),
    so it equals ``blk(x)`` (``blk(x, angles, num_prefix)`` for a RoPE block; eval mode) up to float rounding only
    if the matrix is the one the block uses.
    """
    if blk.training:
        raise AdapterError("attention_block_forward needs the block in eval mode (no dropout / drop path)")
    attn_mod = blk.attn
    b, t, _ = x.shape
    h = attn_mod.num_heads
    xn = blk.norm1(x)
    gate = attn_mod.gate(xn).sigmoid() if getattr(attn_mod, "gate", None) is not None else None
    qkv = attn_mod.qkv(xn).reshape(b, t, 3, h, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = _rotate(attn_mod.q_norm(q), attn_mod.k_norm(k), angles, num_prefix)
    attn = ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(b, t, -1)
    y = attn_mod.norm(y)
    if gate is not None:
        y = y * gate
    y = attn_mod.proj(y)
    x = x + blk.ls1(y)
    x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return x, attn


# ----------------------------------------------------------------------------------------------------------------
# the interface


@dataclass
class EmbedParts:
    """The first block's input in parts, for callers that rebuild the sequence themselves (masked forwards).

    ``prefix`` ``(B, P, D)``: CLS and register tokens with whatever position they get; ``content`` ``(B, N, D)``:
    patch embeddings without position; ``pos`` ``(B or 1, N, D)``: the patch position embeddings, row-major over
    ``grid``. ``cat([prefix, content + pos], 1)`` is the sequence :meth:`BackboneAdapter.embed` returns (before
    :meth:`BackboneAdapter.input_norm`).
    """

    prefix: torch.Tensor
    content: torch.Tensor
    pos: torch.Tensor
    grid: tuple[int, int]


class BackboneAdapter:
    """Tokens per layer and attention per layer of a frozen ViT, independent of where the weights came from.

    Attributes: ``model`` (the wrapped ``nn.Module``, eval mode), ``name``, ``num_prefix`` (CLS + registers),
    ``patch_size``, ``mean`` / ``std`` (input normalisation, RGB in [0, 1]), ``depth``, ``num_heads``,
    ``embed_dim``. Subclasses implement :meth:`embed`.
    """

    name: str = "backbone"
    supports_masks: bool = False

    def __init__(self, model: nn.Module, patch_size: int, num_prefix: int, mean=None, std=None, name=None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.patch_size = int(patch_size)
        self.num_prefix = int(num_prefix)
        self.mean = tuple(float(m) for m in (mean if mean is not None else IMAGENET_MEAN))
        self.std = tuple(float(s) for s in (std if std is not None else IMAGENET_STD))
        if name is not None:
            self.name = name

    # --- to implement -------------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, content_mask=None, pos_mask=None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images ``(B, 3, H, W)`` -> input sequence ``(B, T, D)`` of the first block and the grid."""
        raise NotImplementedError

    def embed_parts(self, x: torch.Tensor) -> EmbedParts:
        """Normalised images ``(B, 3, H, W)`` -> the parts of the first block's input (:class:`EmbedParts`)."""
        raise AdapterError(f"{self.name}: this backbone cannot split its input into content and positions")

    def input_norm(self, seq: torch.Tensor) -> torch.Tensor:
        """What the backbone applies to the assembled sequence before the first block (identity by default)."""
        return seq

    @property
    def position_mask_token(self) -> torch.Tensor | None:
        """The backbone's own [POSMASK] token ``(D,)`` (DropPos's [MASK] position token), or None."""
        return None

    # --- shared -------------------------------------------------------------------------------------------------
    def encode_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """Any first-block input ``(B, T, D)`` (e.g. assembled from :meth:`embed_parts`) -> final-normed tokens after
        the last block. Gradients flow (to a learnable token in ``seq``); the weights stay frozen."""
        seq = self.input_norm(seq)
        n = seq.shape[1] - self.num_prefix
        side = int(n**0.5)
        grid = (side, side) if side * side == n else (1, n)
        for blk in self.blocks:
            seq = self.run_block(blk, seq, grid)
        return self.final_norm(seq)

    def run_block(self, blk: nn.Module, seq: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """One block on a sequence over the patch ``grid`` (RoPE backbones rotate by the grid's coordinates)."""
        return blk(seq)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.blocks

    @property
    def final_norm(self) -> nn.Module:
        return self.model.norm

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.blocks[0].attn.num_heads)

    @property
    def embed_dim(self) -> int:
        return int(self.blocks[0].norm1.normalized_shape[0])

    def resolve_layers(self, layers) -> list[int]:
        """``None``/``"last"`` -> ``[depth-1]``; ``"all"`` -> every block; ints (negative from the end) checked."""
        if layers is None or layers == "last":
            return [self.depth - 1]
        if layers == "all":
            return list(range(self.depth))
        if isinstance(layers, int):
            layers = [layers]
        out = []
        for i in layers:
            j = int(i) + self.depth if int(i) < 0 else int(i)
            if not 0 <= j < self.depth:
                raise AdapterError(f"layer {i} out of range for a {self.depth}-block backbone")
            out.append(j)
        return sorted(set(out))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images in [0, 1] ``(B, 3, H, W)`` -> model input (``(x - mean) / std``)."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    @torch.no_grad()
    def sequences(self, x: torch.Tensor, layers=None, norm: bool = True, content_mask=None, pos_mask=None):
        """Whole token sequences ``(B, T, D)``, prefix tokens first, after each requested block (final norm applied
        if ``norm``), in layer order. ``x`` is the normalised input. ``layers``: see :meth:`resolve_layers` (default:
        the last block)."""
        wanted = self.resolve_layers(layers)
        seq, grid = self.embed(x, content_mask=content_mask, pos_mask=pos_mask)
        outs = []
        for i, blk in enumerate(self.blocks):
            seq = self.run_block(blk, seq, grid)
            if i in wanted:
                outs.append(self.final_norm(seq) if norm else seq)
            if i >= wanted[-1]:
                break
        return outs

    @torch.no_grad()
    def tokens(self, x: torch.Tensor, layers=None, norm: bool = True, content_mask=None, pos_mask=None):
        """Patch tokens ``(B, N, D)`` of :meth:`sequences` (the prefix tokens removed)."""
        return [s[:, self.num_prefix :] for s in self.sequences(x, layers, norm, content_mask, pos_mask)]

    @torch.no_grad()
    def cls_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final-normed CLS token ``(B, D)`` after the last block (``x`` normalised input)."""
        if getattr(self.model, "cls_token", None) is None:  # prefix tokens may be registers only
            raise AdapterError(f"{self.name} has no CLS token")
        return self.sequences(x)[-1][:, 0]

    @torch.no_grad()
    def iter_attentions(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield the softmax attention ``(B, H, T, T)`` of each block in turn (memory: one layer at a time)."""
        seq, grid = self.embed(x)
        angles = self.rope_angles(grid)
        for blk in self.blocks:
            seq, attn = attention_block_forward(blk, seq, angles, self.num_prefix)
            yield attn

    def rope_angles(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The RoPE angles ``(B or 1, N, head_dim / 2)`` the blocks rotate by at ``grid``; ``None`` (default): the
        backbone has no RoPE."""
        return None

    def attentions(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Softmax attention ``(B, H, T, T)`` of every block, ``T = num_prefix + N``."""
        return list(self.iter_attentions(x))

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an input of ``height x width`` pixels."""
        return height // self.patch_size, width // self.patch_size

    def forward_masked(self, x: torch.Tensor, content_mask=None, pos_mask=None) -> torch.Tensor:
        """Final-normed patch tokens ``(B, N, D)`` with optional [MASK] / [POSMASK] replacement (bool ``(B, N)``)."""
        if (content_mask is not None or pos_mask is not None) and not self.supports_masks:
            raise AdapterError(f"{self.name}: this backbone has no [MASK]/[POSMASK] tokens")
        return self.tokens(x, "last", content_mask=content_mask, pos_mask=pos_mask)[0]


class OursAdapter(BackboneAdapter):
    """:class:`pretrain.models.VisionTransformer` (position field or ``pos_embed``, registers, mask tokens)."""

    supports_masks = True

    def __init__(self, model, mean=None, std=None, name=None):
        super().__init__(model, model.patch_size, model.num_prefix_tokens, mean, std, name)

    def embed(self, x, content_mask=None, pos_mask=None):
        self._pos_mask = pos_mask  # RoPE: position-masked patches stay unrotated (docs/positions.md)
        return self.model.prepare_tokens(x, content_mask=content_mask, pos_mask=pos_mask)

    def run_block(self, blk, seq, grid):
        """The model's block with its RoPE angles at ``grid`` (the input's integer grid), if it has RoPE."""
        return blk(seq, self.rope_angles(grid), self.model.num_prefix_tokens)

    def rope_angles(self, grid):
        """``model.attention_angles`` at ``grid`` (position-masked patches of the last :meth:`embed` unrotated)."""
        return self.model.attention_angles(grid, pos_mask=getattr(self, "_pos_mask", None))

    def embed_parts(self, x):
        """As ``prepare_tokens`` without masks: field (whole virtual image) or resampled ``pos_embed`` positions."""
        m = self.model
        self._pos_mask = None
        t = m.patch_embed(x)  # (B, gh, gw, d)
        b, gh, gw, d = t.shape
        content = t.reshape(b, gh * gw, d)
        pos = m.patch_pos_embed(b, (gh, gw)).to(content.dtype)
        prefix = [(m.cls_token + m.cls_pos()).to(content.dtype).expand(b, -1, -1)]
        if m.num_register_tokens:
            prefix.append(m.reg_token.to(content.dtype).expand(b, -1, -1))
        return EmbedParts(torch.cat(prefix, dim=1), content, pos, (gh, gw))

    @property
    def position_mask_token(self):
        return self.model.posmask_token.reshape(-1)


class TimmAdapter(BackboneAdapter):
    """timm ``VisionTransformer`` (``dynamic_img_size=True`` so any input size interpolates ``pos_embed``)."""

    def __init__(self, model, mean=None, std=None, name=None):
        patch = model.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        super().__init__(model, patch, model.num_prefix_tokens, mean, std, name)

    def embed(self, x, content_mask=None, pos_mask=None):
        if content_mask is not None or pos_mask is not None:
            raise AdapterError(f"{self.name}: timm backbones have no [MASK]/[POSMASK] tokens")
        m = self.model
        t = m.patch_embed(x)
        if t.ndim == 4:  # NHWC (dynamic_img_size)
            grid = (int(t.shape[1]), int(t.shape[2]))
        else:
            grid = tuple(int(g) for g in m.patch_embed.grid_size)
        t = m._pos_embed(t)
        t = m.patch_drop(t)
        t = m.norm_pre(t)
        return t, grid

    def embed_parts(self, x):
        """timm's ``_pos_embed`` in parts: ``pos_embed`` resampled to the grid (``dynamic_img_size``), its prefix
        slots added to CLS / registers unless ``no_embed_class``."""
        from timm.layers import resample_abs_pos_embed

        m = self.model
        if m.pos_embed is None:
            raise AdapterError(f"{self.name}: no absolute pos_embed to split off the patch tokens")
        t = m.patch_embed(x)
        if t.ndim == 4:  # NHWC (dynamic_img_size)
            grid = (int(t.shape[1]), int(t.shape[2]))
        else:
            grid = tuple(int(g) for g in m.patch_embed.grid_size)
        content = t.reshape(t.shape[0], grid[0] * grid[1], t.shape[-1])
        p = 0 if m.no_embed_class else m.num_prefix_tokens
        pos_embed = m.pos_embed
        if m.dynamic_img_size:
            pos_embed = resample_abs_pos_embed(
                pos_embed, new_size=grid, old_size=m.patch_embed.grid_size, num_prefix_tokens=p
            )
        prefix = [tok.expand(t.shape[0], -1, -1) for tok in (m.cls_token, m.reg_token) if tok is not None]
        prefix = torch.cat(prefix, dim=1) if prefix else content[:, :0]
        if p:
            prefix = prefix + pos_embed[:, :p]
        return EmbedParts(prefix, content, pos_embed[:, p:], grid)

    def input_norm(self, seq):
        return self.model.norm_pre(seq)


# ----------------------------------------------------------------------------------------------------------------
# loading


def _display_name(path: str) -> str:
    base = os.path.basename(os.fspath(path))
    for ext in (".pth", ".pt", ".ckpt", ".bin", ".safetensors"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def build_timm_from_canonical(c, grid: tuple[int, int], random_init: bool = False):
    """timm ``VisionTransformer`` from a :class:`transfer.convert.canonical.CanonicalViT` (LayerScale folded here).

    Positions are materialised once at ``grid`` by the converter's timm writer. With ``random_init`` the same
    architecture is returned with timm's default random initialisation instead of the weights.
    """
    from timm.models.vision_transformer import VisionTransformer

    from transfer.convert.canonical import fold_layerscale
    from transfer.convert.writers import write_timm

    res = write_timm(fold_layerscale(c), tuple(grid))
    kw = dict(res.meta["timm_kwargs"])
    model = VisionTransformer(
        **kw,
        dynamic_img_size=True,
        norm_layer=partial(nn.LayerNorm, eps=res.meta["norm_eps"]),
        weight_init="" if random_init else "skip",
    )
    if not random_init:
        missing, unexpected = model.load_state_dict(res.state, strict=False)
        if missing or unexpected:
            raise AdapterError(f"converted weights do not fit timm's ViT: missing {missing}, unexpected {unexpected}")
    return model, res.meta


def _ours_from_checkpoint(obj, random_init: bool, seed: int):
    from pretrain.export import is_backbone_checkpoint, load_backbone
    from pretrain.models.vit import ViTConfig, build_vit

    if is_backbone_checkpoint(obj):
        if random_init:
            torch.manual_seed(seed)
            return build_vit(ViTConfig(**obj["meta"]["arch"])), obj["meta"]
        return load_backbone(obj)
    return None


def load_adapter(path, image_size: int = 224, random_init: bool = False, seed: int = 0, name=None, **read_options):
    """Wrap the checkpoint at ``path`` in a :class:`BackboneAdapter`.

    Our exported backbones (and training checkpoints in our layout) become :class:`OursAdapter`; DINOv2, timm and
    MAE-style checkpoints go through the converter (in memory) and become :class:`TimmAdapter`, with positions
    materialised at ``image_size // patch``. ``random_init``: same architecture, random weights (seeded).
    ``read_options``: ``src_format``, ``num_heads``, ``norm_eps``, ``unsafe_load`` as for ``tools/convert_ckpt.py``.
    """
    from transfer.convert.canonical import ConversionError
    from transfer.convert.readers import ReadOptions, load_file, read_checkpoint

    name = name or _display_name(path)
    unsafe = bool(read_options.pop("unsafe_load", False))
    try:
        obj = load_file(os.fspath(path), unsafe_load=unsafe)
    except ConversionError as e:
        raise AdapterError(str(e)) from None
    got = _ours_from_checkpoint(obj, random_init, seed)
    if got is not None:
        model, meta = got
        return OursAdapter(model, meta.get("mean"), meta.get("std"), name=name)
    try:
        c, _ = read_checkpoint(obj, ReadOptions(**read_options))
    except ConversionError as e:
        raise AdapterError(f"{path}: {e}") from None
    except TypeError as e:
        raise AdapterError(f"bad read option: {e}") from None
    del obj
    if c.source_format == "ours":  # a training checkpoint: rebuild our own model from the teacher backbone
        from pretrain.models.vit import ViTConfig, build_vit

        torch.manual_seed(seed)
        model = build_vit(ViTConfig(**c.source_meta["vit_config"]))
        if not random_init:
            model.load_state_dict(c.source_meta["source_state"], strict=True)
        return OursAdapter(model, c.mean, c.std, name=name)
    patch = c.arch.patch_size
    grid = (max(1, image_size // patch), max(1, image_size // patch))
    torch.manual_seed(seed)
    model, meta = build_timm_from_canonical(c, grid, random_init=random_init)
    return TimmAdapter(model, meta.get("mean"), meta.get("std"), name=name)


def unique_names(names: Sequence[str]) -> list[str]:
    """Make display names unique by suffixing ``-2``, ``-3``... to repeats."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out
