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

Masking (student, global crops): ``content_mask`` replaces the patch *content* by ``mask_token`` ([MASK]) and keeps
its position; ``pos_mask`` replaces the patch *position* by ``posmask_token`` ([POSMASK]) and keeps its content.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from .position_field import PositionField, interpolate_pos_embed, mae_sincos_2d

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
        else:
            raise ValueError(f"pos_embed_type must be 'learned' or 'sincos', got {cfg.pos_embed_type!r}")
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.posmask_token = nn.Parameter(torch.zeros(1, d))
        if cfg.drop_path_uniform:
            dpr = [cfg.drop_path_rate] * cfg.depth
        else:
            dpr = [x.item() for x in torch.linspace(0, cfg.drop_path_rate, cfg.depth)]
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(
            Block(
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
        self._init_weights()

    def _init_weights(self) -> None:
        if self.cfg.pos_field or self.cfg.pos_embed_type == "learned":  # a fixed sin-cos table keeps its values
            nn.init.trunc_normal_(self.cls_pos_embed if self.cfg.pos_field else self.pos_embed, std=0.02)
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

    def patch_pos_embed(self, batch: int, grid: tuple[int, int], boxes=None, flips=None) -> torch.Tensor:
        """Patch position embeddings ``(B or 1, gh*gw, d)`` for crops at ``boxes`` (virtual coords) / ``flips``."""
        if self.cfg.pos_field:
            if boxes is None:
                boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=self.cls_token.device).expand(batch, 4)
            return self.pos_field(boxes, flips, grid)
        return interpolate_pos_embed(self.pos_embed, grid, num_prefix=1, rule=self.cfg.pos_embed_interpolation)

    def cls_pos(self) -> torch.Tensor:
        return self.cls_pos_embed if self.cfg.pos_field else self.pos_embed[:, :1]

    def prepare_tokens(self, x, boxes=None, flips=None, content_mask=None, pos_mask=None):
        """Images -> token sequence ``[CLS, registers..., patches]`` and the patch grid."""
        tokens = self.patch_embed(x)  # (B, gh, gw, d)
        b, gh, gw, d = tokens.shape
        tokens = tokens.reshape(b, gh * gw, d)
        if content_mask is not None:
            tokens = torch.where(content_mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        pos = self.patch_pos_embed(b, (gh, gw), boxes, flips).to(tokens.dtype)
        if pos_mask is not None:
            pos = torch.where(pos_mask[..., None], self.posmask_token.to(tokens.dtype), pos)
        tokens = tokens + pos
        prefix = [(self.cls_token + self.cls_pos()).expand(b, -1, -1)]
        if self.num_register_tokens:
            prefix.append(self.reg_token.expand(b, -1, -1))
        return torch.cat(prefix + [tokens], dim=1), (gh, gw)

    def forward(self, x, boxes=None, flips=None, content_mask=None, pos_mask=None) -> dict:
        """Returns the final-normed ``cls`` ``(B, d)``, ``patch`` ``(B, N, d)``, ``reg`` ``(B, R, d)`` and ``grid``."""
        seq, grid = self.prepare_tokens(x, boxes, flips, content_mask, pos_mask)
        for blk in self.blocks:
            seq = blk(seq)
        seq = self.norm(seq)
        r = self.num_prefix_tokens
        return {"cls": seq[:, 0], "reg": seq[:, 1:r], "patch": seq[:, r:], "grid": grid}

    def block_outputs(self, x, layers=None, norm: bool = True):
        """Token sequences after the given block indices (0-based; all if None), for probes and analysis. (Not
        timm/DINOv2's ``get_intermediate_layers``, whose ``n`` counts the last blocks.)"""
        seq, grid = self.prepare_tokens(x)
        wanted = set(range(len(self.blocks))) if layers is None else set(layers)
        outs = []
        for i, blk in enumerate(self.blocks):
            seq = blk(seq)
            if i in wanted:
                outs.append(self.norm(seq) if norm else seq)
        return outs, grid

    def meta(self) -> dict:
        return asdict(self.cfg)


def build_vit(cfg: ViTConfig | dict) -> VisionTransformer:
    if isinstance(cfg, dict):
        cfg = ViTConfig(**cfg)
    return VisionTransformer(cfg)
