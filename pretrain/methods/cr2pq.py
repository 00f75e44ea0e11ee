"""CR2PQ: continuous relative rotary positional query for dense representation learning (docs/cr2pq.md).

Per image, two BYOL views A and B (:class:`~pretrain.data.byol_views.BYOLTwoViews`, boxes and flips recorded). The
student encoder, our ViT with continuous 2-D RoPE in every block and no additive position, runs on view A at its
integer patch grid. Every patch of view B gets continuous coordinates in A's frame (top-left corner of A = origin,
one patch of A = unit; :func:`~pretrain.data.relative_coords.relative_coords`, CR2PQ Eq. 4 / Listing 1) on the grid
of the teacher's output (``K_B`` follows the teacher). The position-aware cross-attention
(:class:`~pretrain.models.positional_query.PositionalQueryAttention`, Eq. 8) turns a learnable mask token, rotated
at those coordinates, into one query per B patch over A's rotated keys and values; a 2-block decoder maps the
results to the frozen teacher's patch embeddings of view B (:mod:`pretrain.models.teachers`). The loss is
``L_patch + lambda L_global`` (:mod:`pretrain.losses.cr2pq`, Eqs. 9-10), the global term through a 2-layer
projector on mean-pooled tokens. Only the encoder is exported; its ``meta["arch"]`` records the RoPE (``rope``,
``rope_base``, ``rope_rule``, ``rope_coords="grid"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from ..data.byol_views import BYOLTwoViews
from ..data.dataset import SSLDataset
from ..data.folder import ImageFolderDataset
from ..data.position_aug import PositionScaleAugmentation
from ..data.relative_coords import relative_coords
from ..losses.cr2pq import global_loss, normalize_targets, patch_loss
from ..models.from_config import backbone_config
from ..models.positional_query import GlobalProjector, PatchDecoder, PositionalQueryAttention, init_linears
from ..models.rope import grid_coords
from ..models.teachers import teacher_from_config
from ..models.vit import VisionTransformer, build_vit
from .base import PretrainingMethod, zero_from

logger = logging.getLogger("pretrain")


class CR2PQCollator:
    """CR2PQ samples -> ``{"view_a", "view_b"}`` ``(B, 3, H, W)``, ``"boxes"`` ``(B, 2, 4)`` (A, B; normalised
    ``(x0, y0, x1, y1)`` before flipping) and ``"flips"`` ``(B, 2)`` bool."""

    def __call__(self, samples: Sequence[dict]) -> dict:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty batch")
        return {
            "view_a": torch.stack([s["global_crops"][0] for s in samples]),
            "view_b": torch.stack([s["global_crops"][1] for s in samples]),
            "boxes": torch.stack([s["global_boxes"] for s in samples]),
            "flips": torch.stack([s["global_flips"] for s in samples]),
        }


def cr2pq_encoder_config(cfg):
    """The student's :class:`~pretrain.models.vit.ViTConfig`: the configured ViT with RoPE at the integer grid in
    every block and no additive position embedding."""
    c = cfg.cr2pq
    return replace(
        backbone_config(cfg),
        pos_field=False,
        pos_embed_type="none",
        rope=True,
        rope_base=float(c.rope_base),
        rope_rule=str(c.rope_rule),
        rope_coords="grid",
    )


class CR2PQ(PretrainingMethod):
    """Holds ``encoder`` (exported), ``cross_attention``, ``decoder``, ``projector`` and the frozen ``teacher``."""

    name = "cr2pq"
    loss_terms = ("patch_loss", "global_loss")

    @classmethod
    def build_dataset(cls, cfg, images: ImageFolderDataset) -> SSLDataset:
        c = cfg.cr2pq
        views = BYOLTwoViews(
            size=cfg.crops.global_size,
            scale=tuple(cfg.crops.global_scale),
            flip_prob=c.flip_prob,
            blur_prob=tuple(c.blur_prob),
            solarize_prob=tuple(c.solarize_prob),
            photometric=cfg.crops.photometric,
        )
        return SSLDataset(images, views, PositionScaleAugmentation("none"), seed=cfg.train.seed)

    @classmethod
    def build_collator(cls, cfg) -> CR2PQCollator:
        return CR2PQCollator()

    def __init__(self, cfg):
        super().__init__()
        if cfg.pos_field.enabled:
            raise ValueError("CR2PQ's positions are RoPE at the patch grid, not the field: set pos_field.enabled=false")
        self.cfg = cfg
        c = cfg.cr2pq
        self.encoder = build_vit(cr2pq_encoder_config(cfg))
        size = self.encoder.cfg.img_size
        self.grid_a = (size // self.encoder.patch_size,) * 2
        self.teacher = teacher_from_config(c, size)
        self.grid_b, teacher_dim = self.teacher.grid(size)
        d, heads = self.encoder.embed_dim, self.encoder.cfg.num_heads
        self.cross_attention = PositionalQueryAttention(d, heads, c.rope_base, c.rope_rule)
        self.decoder = PatchDecoder(d, teacher_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads)
        self.projector = GlobalProjector(d, teacher_dim, c.projector_hidden_dim)
        for module in (self.cross_attention, self.decoder, self.projector):
            init_linears(module)
        logger.info(
            "cr2pq: view A %dx%d patches; teacher %s (%s) gives view B %dx%d x %d",
            *self.grid_a,
            c.teacher,
            f"{c.teacher_name}, random init seed {c.teacher_seed}" if c.teacher_init == "random" else c.teacher_weights,
            *self.grid_b,
            teacher_dim,
        )

    def trainable_modules(self) -> nn.ModuleDict:
        modules = {"encoder": self.encoder, "cross_attention": self.cross_attention, "decoder": self.decoder}
        return nn.ModuleDict(dict(modules, projector=self.projector))

    def backbone_to_export(self) -> VisionTransformer:
        return self.encoder

    def view_b_coords(self, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """``(B, K_B, 2)`` coordinates of view B's teacher-grid patches in view A's frame."""
        anchor = self.cfg.cr2pq.coord_anchor
        return relative_coords(boxes[:, 0], boxes[:, 1], self.grid_a, self.grid_b, flips[:, 0], flips[:, 1], anchor)

    def predict(self, view_a: torch.Tensor, coords_b: torch.Tensor) -> dict:
        """The student side: encoder patch tokens of view A ``h_a``, the queries' outputs ``h_b`` at ``coords_b``
        and the decoder's predictions ``z`` ``(B, K_B, teacher width)``."""
        h_a = self.encoder(view_a)["patch"]
        coords_a = grid_coords(*self.grid_a, device=h_a.device)[None]
        h_b = self.cross_attention(h_a, coords_a, coords_b.to(h_a.device))
        return {"h_a": h_a, "h_b": h_b, "z": self.decoder(h_b)}

    def forward(self, batch: dict, values: dict) -> dict:
        """``{"loss": L_patch + lambda L_global, "patch_loss", "global_loss"}`` for one batch."""
        c = self.cfg.cr2pq
        out = self.predict(batch["view_a"], self.view_b_coords(batch["boxes"], batch["flips"]))
        target = normalize_targets(self.teacher(batch["view_b"]), c.target_norm)
        if target.shape[1] != out["z"].shape[1]:
            raise ValueError(f"the teacher gave {target.shape[1]} patches, expected {out['z'].shape[1]}")
        lp = patch_loss(out["z"], target, c.loss_p)
        pooled = (out["h_b"] if c.global_tokens == "queries" else out["h_a"]).mean(1)
        lg = global_loss(self.projector(pooled), target, c.loss_p)
        idle = zero_from([self.encoder.mask_token, self.encoder.posmask_token])
        return {"loss": lp + c.global_weight * lg + idle, "patch_loss": lp, "global_loss": lg}
