"""Vision Transformer whose patch position embeddings come from a crop-tied position field (docs/method.md §1).

Blocks are timm's (``scaled_dot_product_attention``, LayerScale, stochastic depth), so parameter names follow
timm's ``VisionTransformer`` (``patch_embed.proj``, ``blocks.i.attn.qkv``, ``blocks.i.ls1.gamma``, ``norm``)
and the converters in ``transfer/convert`` map them to detectron2 / MMSeg names.

Position embeddings:
- ``pos_field.enabled``: patch embeddings sampled from :class:`PositionField` at each crop's box and flip;
  the CLS token has its own learned ``cls_pos_embed``; register tokens get none.
- otherwise (DINOv2 behaviour): a learned ``pos_embed`` of shape ``(1, 1 + n*n, d)`` (CLS slot first), resampled
  bicubically to each crop's grid by ``pos_embed_interpolation``: ``dinov2`` (DINOv2's code, scale factor with
  its 0.1 offset) or ``size``. With ``pos_embed_type="sincos"`` the same ``pos_embed`` is instead a fixed buffer
  holding MAE's 2-D sin-cos table with a zero CLS slot (:func:`~.position_field.mae_sincos_2d`; DropPos,
  docs/droppos.md); it is saved in the state dict like the learned one, so converters read it unchanged.
- ``pos_embed_type="crop_sincos"``: MAE's sin-cos evaluated at each patch's crop-tied continuous coordinates (the
  virtual-image coordinates of the field, in units of ``pos_field_size``; :mod:`.crop_positions`), the CLS token
  with a learned ``cls_pos_embed``; ``"none"``: no additive position (with ``rope``).
- ``rope``: continuous 2-D axial RoPE on q and k of the patch tokens in every block (:mod:`.rope`, docs/positions.md);
  CLS and registers stay unrotated. The coordinates are the crop-tied ones for crops with ``boxes``, else the
  ``coords`` passed to ``forward``, else the input's own patch grid under ``rope_coords``.

Masking (student, global crops): ``content_mask`` replaces the patch *content* by ``mask_token`` ([MASK]) and keeps
its position; ``pos_mask`` replaces the patch *position* by ``posmask_token`` ([POSMASK]) and keeps its content.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from timm.layers import PatchEmbed
from torch import nn

from .crop_positions import continuous_sincos_2d, crop_patch_coords, full_image_coords
from .position_field import PositionField, interpolate_pos_embed, mae_sincos_2d
from .rope import ROPE_COORDS, ROPE_RULES, coords_for_grid, masked_angles, rope_angles, rope_frequencies
from .rope_block import RopeBlock

#: ``ViTConfig.pos_embed_type`` values (with the field off).
POS_EMBED_TYPES = ("learned", "sincos", "crop_sincos", "none")

ARCHS = {
    # name: (embed_dim, depth, num_heads)
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    # test-sized
    "vit_pico": (64, 2, 2),
    "vit_nano": (96, 4, 3),
}


@dataclass
class ViTConfig:
    """Everything needed to rebuild the backbone; stored as ``meta["arch"]`` in exported checkpoints."""

    arch: str = "vit_small"
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layerscale: float | None = 1e-5
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = False
    num_register_tokens: int = 0
    norm_eps: float = 1e-6
    pos_field: bool = True
    pos_field_size: list = field(default_factory=lambda: [50, 50])
    pos_field_init: str = "trunc_normal"
    # the field-off resampling rule; "size" when absent, as in checkpoints exported before the option existed
    pos_embed_interpolation: str = "size"
    # field off: "learned" = a learnable pos_embed | "sincos" = MAE's fixed 2-D sin-cos table, a buffer (DropPos);
    # "learned" when absent, as in checkpoints exported before the option existed
    pos_embed_type: str = "learned"
    # continuous 2-D axial RoPE in every block (docs/positions.md); off when absent
    rope: bool = False
    rope_base: float = 10000.0
    rope_rule: str = "axial"
    # coordinates of an input without crop boxes: "grid" = its integer patch grid | "normalized" (DINOv3)
    rope_coords: str = "grid"

    @classmethod
    def from_arch(cls, arch: str, **overrides) -> ViTConfig:
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        d, depth, heads = ARCHS[arch]
        kwargs = dict(arch=arch, embed_dim=d, depth=depth, num_heads=heads)
        kwargs.update(overrides)
        return cls(**kwargs)


class VisionTransformer(nn.Module):
    """ViT with a crop-tied position field, [MASK] and [POSMASK] tokens and optional registers."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.embed_dim = d
        self.patch_size = cfg.patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.patch_embed = PatchEmbed(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=d, output_fmt="NHWC", strict_img_size=False
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if cfg.num_register_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d))
        if cfg.pos_field:
            self.pos_field = PositionField(d, tuple(cfg.pos_field_size), init=cfg.pos_field_init)
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, d))
        elif cfg.pos_embed_type == "sincos":
            n = cfg.img_size // cfg.patch_size
            self.register_buffer("pos_embed", torch.cat([torch.zeros(1, d), mae_sincos_2d(d, n, n)])[None])
        elif cfg.pos_embed_type == "learned":
            n = cfg.img_size // cfg.patch_size
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n * n, d))
        elif cfg.pos_embed_type == "crop_sincos":
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, d))
        elif cfg.pos_embed_type != "none":
            raise ValueError(f"pos_embed_type must be one of {POS_EMBED_TYPES}, got {cfg.pos_embed_type!r}")
        self._check_rope(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.posmask_token = nn.Parameter(torch.zeros(1, d))
        if cfg.drop_path_uniform:
            dpr = [cfg.drop_path_rate] * cfg.depth
        else:
            dpr = [x.item() for x in torch.linspace(0, cfg.drop_path_rate, cfg.depth)]
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(
            RopeBlock(
                d,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                init_values=cfg.layerscale or None,
                drop_path=dpr[i],
                norm_layer=norm,
            )
            for i in range(cfg.depth)
        )
        self.norm = norm(d)
        if cfg.rope:
            self.register_buffer(
                "rope_freqs", rope_frequencies(d // cfg.num_heads, cfg.rope_base, cfg.rope_rule), False
            )
        self._init_weights()

    @staticmethod
    def _check_rope(cfg: ViTConfig) -> None:
        """RoPE replaces the additive patch position: it needs ``pos_embed_type="none"`` and the field off."""
        if cfg.rope and (cfg.pos_field or cfg.pos_embed_type != "none"):
            raise ValueError("rope=True needs pos_field=False and pos_embed_type='none' (RoPE is the position)")
        if cfg.pos_embed_type == "none" and not cfg.pos_field and not cfg.rope:
            raise ValueError("pos_embed_type='none' without rope leaves the ViT without positions")
        if cfg.rope and ((cfg.embed_dim // cfg.num_heads) % 4 or cfg.embed_dim % cfg.num_heads):
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {cfg.embed_dim}/{cfg.num_heads}")
        if cfg.rope_rule not in ROPE_RULES or cfg.rope_coords not in ROPE_COORDS:
            raise ValueError(f"rope_rule must be in {ROPE_RULES} and rope_coords in {ROPE_COORDS}")

    def _init_weights(self) -> None:
        if self.cfg.pos_field or self.cfg.pos_embed_type in ("learned", "crop_sincos"):  # fixed tables keep values
            learned = self.pos_embed if self.cfg.pos_embed_type == "learned" and not self.cfg.pos_field else None
            nn.init.trunc_normal_(self.cls_pos_embed if learned is None else learned, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if hasattr(self, "reg_token"):
            nn.init.normal_(self.reg_token, std=1e-6)

        def init_linear(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.blocks.apply(init_linear)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    def patch_pos_embed(self, batch: int, grid: tuple[int, int], boxes=None, flips=None, coords=None) -> torch.Tensor:
        """Patch position embeddings ``(B or 1, gh*gw, d)`` for crops at ``boxes`` (virtual coords) / ``flips``
        (``crop_sincos``: or at ``coords (B, N, 2)``; ``none``: zeros)."""
        if self.cfg.pos_field:
            if boxes is None:
                boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=self.cls_token.device).expand(batch, 4)
            return self.pos_field(boxes, flips, grid)
        if self.cfg.pos_embed_type == "crop_sincos":
            return continuous_sincos_2d(self.patch_coords(grid, boxes, flips, coords), self.embed_dim)
        if self.cfg.pos_embed_type == "none":
            return self.cls_token.new_zeros(1, grid[0] * grid[1], self.embed_dim)
        return interpolate_pos_embed(self.pos_embed, grid, num_prefix=1, rule=self.cfg.pos_embed_interpolation)

    def patch_coords(self, grid: tuple[int, int], boxes=None, flips=None, coords=None) -> torch.Tensor:
        """Continuous patch coordinates ``(B or 1, gh*gw, 2)`` = ``[row, col]``: ``coords`` if given, else the
        crop-tied ones of ``boxes`` / ``flips``, else (no boxes) those of the whole virtual image for
        ``crop_sincos`` and the input's patch grid under ``rope_coords`` for RoPE (docs/positions.md)."""
        if coords is not None:
            if coords.shape[-2:] != (grid[0] * grid[1], 2):
                raise ValueError(f"coords must be (B, {grid[0] * grid[1]}, 2), got {tuple(coords.shape)}")
            return coords.to(device=self.cls_token.device, dtype=torch.float32)
        extent = self.cfg.pos_field_size
        if boxes is not None:
            return crop_patch_coords(boxes.to(self.cls_token.device), flips, grid, extent)
        if self.cfg.pos_embed_type == "crop_sincos":
            return full_image_coords(grid, extent, self.cls_token.device)
        return coords_for_grid(grid[0], grid[1], self.cfg.rope_coords, self.cls_token.device)[None]

    def attention_angles(self, grid, boxes=None, flips=None, pos_mask=None, coords=None) -> torch.Tensor | None:
        """RoPE angles ``(B or 1, gh*gw, head_dim/2)`` of the patches (0 where ``pos_mask``); None without RoPE."""
        if not self.cfg.rope:
            return None
        angles = rope_angles(self.patch_coords(grid, boxes, flips, coords), self.rope_freqs)
        return masked_angles(angles, pos_mask)

    def cls_pos(self) -> torch.Tensor:
        if self.cfg.pos_field or self.cfg.pos_embed_type == "crop_sincos":
            return self.cls_pos_embed
        if self.cfg.pos_embed_type == "none":
            return torch.zeros_like(self.cls_token)
        return self.pos_embed[:, :1]

    def prepare_tokens(self, x, boxes=None, flips=None, content_mask=None, pos_mask=None, coords=None):
        """Images -> token sequence ``[CLS, registers..., patches]`` and the patch grid (RoPE angles are
        :meth:`attention_angles`)."""
        tokens = self.patch_embed(x)  # (B, gh, gw, d)
        b, gh, gw, d = tokens.shape
        tokens = tokens.reshape(b, gh * gw, d)
        if content_mask is not None:
            tokens = torch.where(content_mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        pos = self.patch_pos_embed(b, (gh, gw), boxes, flips, coords).to(tokens.dtype)
        if pos_mask is not None:
            pos = torch.where(pos_mask[..., None], self.posmask_token.to(tokens.dtype), pos)
        tokens = tokens + pos
        prefix = [(self.cls_token + self.cls_pos()).expand(b, -1, -1)]
        if self.num_register_tokens:
            prefix.append(self.reg_token.expand(b, -1, -1))
        return torch.cat(prefix + [tokens], dim=1), (gh, gw)

    def forward(self, x, boxes=None, flips=None, content_mask=None, pos_mask=None, coords=None) -> dict:
        """Returns the final-normed ``cls`` ``(B, d)``, ``patch`` ``(B, N, d)``, ``reg`` ``(B, R, d)`` and ``grid``.

        ``coords`` ``(B, N, 2)``: per-sample ``[row, col]`` patch coordinates (RoPE and ``crop_sincos``), default
        the crop-tied ones of ``boxes`` or the integer grid (:meth:`patch_coords`)."""
        seq, grid = self.prepare_tokens(x, boxes, flips, content_mask, pos_mask, coords)
        angles = self.attention_angles(grid, boxes, flips, pos_mask, coords)
        for blk in self.blocks:
            seq = blk(seq, angles, self.num_prefix_tokens)
        seq = self.norm(seq)
        r = self.num_prefix_tokens
        return {"cls": seq[:, 0], "reg": seq[:, 1:r], "patch": seq[:, r:], "grid": grid}

    def block_outputs(self, x, layers=None, norm: bool = True):
        """Token sequences after the given block indices (0-based; all if None), for probes and analysis. (Not
        timm/DINOv2's ``get_intermediate_layers``, whose ``n`` counts the last blocks.)"""
        seq, grid = self.prepare_tokens(x)
        angles = self.attention_angles(grid)
        wanted = set(range(len(self.blocks))) if layers is None else set(layers)
        outs = []
        for i, blk in enumerate(self.blocks):
            seq = blk(seq, angles, self.num_prefix_tokens)
            if i in wanted:
                outs.append(self.norm(seq) if norm else seq)
        return outs, grid

    def meta(self) -> dict:
        return asdict(self.cfg)


def build_vit(cfg: ViTConfig | dict) -> VisionTransformer:
    if isinstance(cfg, dict):
        cfg = ViTConfig(**cfg)
    return VisionTransformer(cfg)
