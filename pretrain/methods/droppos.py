"""DropPos (Wang et al., NeurIPS 2023): pretraining a ViT by reconstructing dropped positions (docs/droppos.md).

Per image, MAE-style shuffle masking keeps ``V = int(N * (1 - gamma))`` of the ``N`` patches (the visible set, in
a random order); among them ``int(V * (1 - gamma_pos))`` anchors keep their position embedding and the others get
a replacement instead (by default the ViT's learned ``posmask_token``, DropPos's [MASK] position token). The
encoder (our ViT with MAE's fixed 2-D sin-cos ``pos_embed``, CLS position zero) sees [CLS] + the visible patches;
a decoder of timm ``Block`` s without positions classifies every visible patch into one of the ``N`` grid positions.
The loss is the cross-entropy on the position-dropped patches against Gaussian-smoothed targets
``w(i, j) = exp(-d2(i, j) / sigma^2)`` (squared grid distance, sigma decayed linearly to 0), each dropped patch
weighted by its attentive weight: the softmax over all ``N`` patches of ``cos(CLS, patch) / tau`` from a no-grad
forward of the whole image, gathered at the visible patches and renormalised over them; the weighted sum is divided
by the sum of the weights.

What the method needs from the data: one RandomResizedCrop (area ``crops.global_scale``, bicubic) with a random
horizontal flip per image, ImageNet-normalised (:class:`~pretrain.data.dataset.SSLDataset` with one global crop, no
photometric and no position/scale augmentation); the masks are drawn by :class:`DropPosCollator` from a generator
seeded by the samples' seeds, so a resumed run draws the masks of an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import SSLDataset
from ..data.folder import ImageFolderDataset
from ..data.multicrop import MultiCropAugmentation
from ..data.position_aug import PositionScaleAugmentation
from ..io import atomic_torch_save
from ..models.from_config import backbone_config
from ..models.position_field import mae_sincos_2d
from ..models.token_decoder import TokenDecoder
from ..models.vit import VisionTransformer, build_vit
from ..seeding import mix_seeds
from .base import PretrainingMethod, zero_from

HEAD_FILE = "droppos_head.pth"
HEAD_FORMAT = "ssl-vit-toolkit/droppos-head"
MASK_TOKEN_TYPES = ("param", "zeros", "wrong_pos")
TARGET_NORMS = ("rows", "official_broadcast")
SIGMA_DECAYS = ("epoch", "iteration", "none")

#: Salt mixed into the collator's seed so that its stream differs from the samples' own streams.
_COLLATE_SALT = 0xD2095


# ------------------------------------------------------------------------------------------- masks
def visible_count(num_patches: int, mask_ratio: float) -> int:
    """Patches kept visible: ``int(N * (1 - gamma))``, rounded towards zero in floating point as the official code
    does (196 patches at gamma 0.9 keep 19, not 20)."""
    return int(num_patches * (1 - mask_ratio))


def anchor_count(num_visible: int, pos_mask_ratio: float) -> int:
    """Visible patches that keep their position: ``int(V * (1 - gamma_pos))`` (the official rounding)."""
    return int(num_visible * (1 - pos_mask_ratio))


def draw_masks(
    batch: int, num_patches: int, mask_ratio: float, pos_mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's shuffle masking, twice per image: ``argsort`` of uniform noise over the ``N`` patches keeps the first
    ``V`` (:func:`visible_count`), then the same over the ``V`` visible ones keeps :func:`anchor_count` anchors.

    Returns ``ids_keep`` ``(B, V)`` long, the grid index (row-major) of each visible patch in the shuffled order,
    and ``dropped`` ``(B, V)`` bool, True where the patch's position is replaced.
    """
    v = visible_count(num_patches, mask_ratio)
    if v < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch out of {num_patches}")
    ids_keep = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)[:, :v]
    order = torch.rand(batch, v, generator=generator).argsort(dim=1)
    dropped = torch.ones(batch, v, dtype=torch.bool)
    dropped.scatter_(1, order[:, : anchor_count(v, pos_mask_ratio)], False)
    return ids_keep, dropped


def wrong_position_sources(dropped: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For ``mask_token_type=wrong_pos``: ``(B, V)`` long, the visible slot whose position each slot receives:
    itself for an anchor, a random permutation of the image's dropped slots for the dropped ones."""
    b, v = dropped.shape
    src = torch.arange(v).repeat(b, 1)
    for i in range(b):
        slots = dropped[i].nonzero().flatten()
        src[i, slots] = slots[torch.randperm(len(slots), generator=generator)]
    return src


class DropPosCollator:
    """DropPos samples -> ``{"images" (B, 3, H, W), "ids_keep" (B, V), "pos_dropped" (B, V)}`` (and ``"pos_source"``
    with ``wrong_pos``), the masks drawn from a generator seeded by mixing the samples' ``"seed"`` fields."""

    def __init__(self, num_patches: int, mask_ratio: float, pos_mask_ratio: float, wrong_pos: bool = False):
        if visible_count(num_patches, mask_ratio) < 1:
            raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch out of {num_patches}")
        self.num_patches, self.mask_ratio, self.pos_mask_ratio = num_patches, mask_ratio, pos_mask_ratio
        self.wrong_pos = wrong_pos

    def __call__(self, samples: Sequence[dict]) -> dict:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty batch")
        images = torch.stack([s["global_crops"][0] for s in samples])
        seed = mix_seeds(_COLLATE_SALT, len(samples), *(int(s["seed"]) for s in samples))
        generator = torch.Generator().manual_seed(seed)
        ids_keep, dropped = draw_masks(len(samples), self.num_patches, self.mask_ratio, self.pos_mask_ratio, generator)
        batch = {"images": images, "ids_keep": ids_keep, "pos_dropped": dropped}
        if self.wrong_pos:
            batch["pos_source"] = wrong_position_sources(dropped, generator)
        return batch


# ------------------------------------------------------------------------------------------- targets and weights
def smoothing_targets(
    grid: tuple[int, int], sigma: float, norm: str = "rows", index_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Position targets ``(N, N)`` float32: row ``i`` is the smoothed one-hot of position ``i`` of the ``grid``
    ``(gh, gw)``, ``w(i, j) = exp(-d2(i, j) / sigma^2)`` with ``d2`` the squared distance (rows^2 + columns^2)
    between flat indices ``i`` and ``j`` (computed in float64). ``sigma`` below 1e-6 gives the identity (one-hot;
    ``exp(-1 / sigma^2)`` is 0 there anyway).

    ``norm="rows"``: each row divided by its sum (sums exactly 1). ``norm="official_broadcast"``: the official code's
    ``w / w.sum(-1)``, which broadcasts over the last axis, so entry ``(i, j)`` is divided by the sum of row ``j``.
    ``index_grid``: the grid whose row-major coordinates give the distances (the official code's square map, see
    docs/droppos.md); the map is built on it and cut to ``N x N`` (after the normalisation for
    ``official_broadcast``, before it for ``rows``).
    """
    if norm not in TARGET_NORMS:
        raise ValueError(f"norm must be one of {TARGET_NORMS}, got {norm!r}")
    n = grid[0] * grid[1]
    ih, iw = index_grid if index_grid is not None else grid
    if ih * iw < n:
        raise ValueError(f"index grid {ih}x{iw} has fewer than the {n} positions of the {grid[0]}x{grid[1]} grid")
    if sigma < 1e-6:
        return torch.eye(n)
    k = torch.arange(ih * iw)
    r, c = (k // iw).double(), (k % iw).double()
    d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    w = torch.exp(-d2 / float(sigma) ** 2)
    if norm == "official_broadcast":
        return (w / w.sum(-1))[:n, :n].float()
    w = w[:n, :n]
    return (w / w.sum(-1, keepdim=True)).float()


def attentive_weights(cls: torch.Tensor, patches: torch.Tensor, ids_keep: torch.Tensor, tau: float) -> torch.Tensor:
    """``(B, V)``: the softmax over all ``N`` patches of ``cos(cls, patch_j) / tau`` (``cls`` ``(B, d)``, ``patches``
    ``(B, N, d)``), gathered at the visible patches ``ids_keep`` and renormalised to sum 1 over them."""
    sim = F.cosine_similarity(cls[:, None, :].float(), patches.float(), dim=-1)
    a = torch.softmax(sim / tau, dim=-1).gather(1, ids_keep)
    return a / a.sum(-1, keepdim=True)


def droppos_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i weights_i * CE(targets_i, softmax(logits_i)) / sum_i weights_i`` over every patch of the batch:
    ``logits`` and ``targets`` ``(B, V, N)``, ``weights`` ``(B, V)`` (0 for anchors); 0 when no weight is left."""
    per_patch = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return (per_patch * weights).sum() / weights.sum().clamp_min(1e-12)


def position_accuracy(logits: torch.Tensor, ids_keep: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Share of the position-dropped patches whose arg-max position is their true one (unweighted)."""
    hits = (logits.detach().argmax(-1) == ids_keep) & dropped
    return hits.sum().float() / dropped.sum().clamp_min(1).float()


class SigmaSchedule:
    """The smoothing sigma of each iteration, linear from ``start`` to ``end``: ``epoch`` holds the value of the
    iteration's epoch ``e``, ``start + (end - start) * e / epochs`` (the official code); ``iteration`` moves every
    iteration, ``start + (end - start) * t / total`` (paper Eq. 7); ``none`` is ``start`` throughout."""

    def __init__(self, start: float, end: float, mode: str, iters_per_epoch: int, epochs: float, total: int):
        if mode not in SIGMA_DECAYS:
            raise ValueError(f"sigma_decay must be one of {SIGMA_DECAYS}, got {mode!r}")
        self.start, self.end, self.mode = float(start), float(end), mode
        self.iters_per_epoch, self.epochs, self.total = int(iters_per_epoch), float(epochs), int(total)

    def __getitem__(self, it: int) -> float:
        if self.mode == "none":
            return self.start
        if self.mode == "epoch":
            progress = (it // self.iters_per_epoch) / self.epochs
        else:
            progress = it / self.total
        return self.start + (self.end - self.start) * min(progress, 1.0)


# ------------------------------------------------------------------------------------------- modules
class DropPosDecoder(TokenDecoder):
    """Encoder tokens ``(B, L, d)`` -> position logits ``(B, L, N)`` (:class:`TokenDecoder` with ``N`` outputs);
    ``config`` holds its arguments for ``droppos_head.pth``."""

    def __init__(
        self, embed_dim: int, num_positions: int, dim: int = 512, depth: int = 2, heads: int = 16, norm_eps=1e-6
    ):
        super().__init__(embed_dim, num_positions, dim, depth, heads, norm_eps)
        self.config = dict(embed_dim=embed_dim, num_positions=num_positions, dim=dim, depth=depth, heads=heads)
        self.config["norm_eps"] = norm_eps


def encode_visible(
    encoder: VisionTransformer,
    images: torch.Tensor,
    ids_keep: torch.Tensor,
    dropped: torch.Tensor,
    mask_token_type: str = "param",
    pos_source: torch.Tensor | None = None,
) -> torch.Tensor:
    """The encoder on the visible patches only: final-normed ``(B, prefix + V, d)`` tokens ``[CLS, registers,
    visible patches in the order of ids_keep]``. Anchors get their position embedding, dropped patches the
    replacement of ``mask_token_type`` (``param``: ``posmask_token``; ``zeros``; ``wrong_pos``: the position of
    the slot ``pos_source`` names); CLS gets ``cls_pos`` (zero with the sin-cos table)."""
    x = encoder.patch_embed(images)  # (B, gh, gw, d)
    b, gh, gw, d = x.shape
    idx = ids_keep[..., None].expand(-1, -1, d)
    x = x.reshape(b, gh * gw, d).gather(1, idx)
    pos = encoder.patch_pos_embed(b, (gh, gw)).to(x.dtype).expand(b, -1, -1).gather(1, idx)
    if mask_token_type == "param":
        replacement = encoder.posmask_token.to(x.dtype)
    elif mask_token_type == "zeros":
        replacement = pos.new_zeros(())
    elif mask_token_type == "wrong_pos":
        replacement = pos.gather(1, pos_source[..., None].expand(-1, -1, d))
    else:
        raise ValueError(f"mask_token_type must be one of {MASK_TOKEN_TYPES}, got {mask_token_type!r}")
    x = x + torch.where(dropped[..., None], replacement, pos)
    prefix = [(encoder.cls_token + encoder.cls_pos()).to(x.dtype).expand(b, -1, -1)]
    if encoder.num_register_tokens:
        prefix.append(encoder.reg_token.to(x.dtype).expand(b, -1, -1))
    seq = torch.cat(prefix + [x], dim=1)
    for blk in encoder.blocks:
        seq = blk(seq)
    return encoder.norm(seq)


@torch.no_grad()
def mae_init(encoder: VisionTransformer, decoder: nn.Module) -> None:
    """The official code's initialisation: the patch projection xavier-uniform as a flat linear map, CLS and
    [POSMASK] tokens normal(0.02), every Linear xavier-uniform with zero bias, LayerNorms 1 and 0."""
    w = encoder.patch_embed.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.normal_(encoder.cls_token, std=0.02)
    nn.init.normal_(encoder.posmask_token, std=0.02)
    for m in (*encoder.modules(), *decoder.modules()):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def init_like_vit(decoder: nn.Module) -> None:
    """``init: ours``: the decoder's Linears truncated-normal(0.02) with zero bias, as the ViT's blocks."""
    for m in decoder.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------- the method
class DropPos(PretrainingMethod):
    """Holds ``encoder`` (the exported ViT) and ``decoder`` (the position classifier) and computes the loss."""

    name = "droppos"
    loss_terms = ("pos_ce", "pos_acc")

    @classmethod
    def build_dataset(cls, cfg, images: ImageFolderDataset) -> SSLDataset:
        c = cfg.crops
        crop = MultiCropAugmentation(
            global_size=c.global_size,
            local_size=c.local_size,
            n_global=1,
            n_local=0,
            global_scale=tuple(c.global_scale),
            photometric=False,
        )
        return SSLDataset(images, crop, PositionScaleAugmentation("none"), seed=cfg.train.seed)

    @classmethod
    def build_collator(cls, cfg) -> DropPosCollator:
        g = cfg.crops.global_size // cfg.model.patch_size
        dp = cfg.droppos
        return DropPosCollator(g * g, dp.mask_ratio, dp.pos_mask_ratio, wrong_pos=dp.mask_token_type == "wrong_pos")

    @classmethod
    def schedules(cls, cfg, iters_per_epoch: int, total: int) -> dict:
        dp = cfg.droppos
        return {
            "sigma": SigmaSchedule(dp.sigma, dp.sigma_end, dp.sigma_decay, iters_per_epoch, cfg.optim.epochs, total)
        }

    def __init__(self, cfg):
        super().__init__()
        if cfg.pos_field.enabled:
            raise ValueError(
                "DropPos uses a grid pos_embed (droppos.pos_embed), not the field: set pos_field.enabled=false"
            )
        self.cfg = cfg
        dp = cfg.droppos
        vit_cfg = replace(
            backbone_config(cfg), pos_field=False, pos_embed_type="sincos" if dp.pos_embed == "sincos" else "learned"
        )
        self.encoder = build_vit(vit_cfg)
        g = vit_cfg.img_size // vit_cfg.patch_size
        self.grid = (g, g)
        if visible_count(g * g, dp.mask_ratio) < 1:
            raise ValueError(f"droppos.mask_ratio {dp.mask_ratio} leaves no visible patch out of {g * g}")
        d = self.encoder.embed_dim
        self.decoder = DropPosDecoder(d, g * g, dp.decoder_dim, dp.decoder_depth, dp.decoder_heads, vit_cfg.norm_eps)
        if dp.init == "mae":
            mae_init(self.encoder, self.decoder)
        else:
            init_like_vit(self.decoder)
        if dp.pos_embed == "sincos_learnable":
            with torch.no_grad():
                self.encoder.pos_embed.copy_(torch.cat([torch.zeros(1, d), mae_sincos_2d(d, g, g)])[None])
        self._targets: tuple[tuple, torch.Tensor] | None = None

    def trainable_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"encoder": self.encoder, "decoder": self.decoder})

    def backbone_to_export(self) -> VisionTransformer:
        return self.encoder

    def targets(self, sigma: float, device: torch.device) -> torch.Tensor:
        """The ``(N, N)`` smoothed targets at ``sigma`` (:func:`smoothing_targets` as configured), cached."""
        dp = self.cfg.droppos
        key = (float(sigma), str(device))
        if self._targets is None or self._targets[0] != key:
            index_grid = None
            if dp.target_grid == "official_square":
                side = self.encoder.cfg.img_size // self.grid[1]
                index_grid = (side, side)
            self._targets = (key, smoothing_targets(self.grid, sigma, dp.target_norm, index_grid).to(device))
        return self._targets[1]

    @torch.no_grad()
    def attention_weights(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """:func:`attentive_weights` from a no-grad forward of the whole, unmasked images through the encoder."""
        out = self.encoder(images)
        return attentive_weights(out["cls"], out["patch"], ids_keep, self.cfg.droppos.tau)

    def idle_parameters(self) -> list[nn.Parameter]:
        """Encoder tokens DropPos never uses: ``mask_token`` (content masking) and, unless ``mask_token_type`` is
        ``param``, ``posmask_token``; tied into the loss with weight 0 (DDP needs a gradient for every parameter)."""
        idle = [self.encoder.mask_token]
        if self.cfg.droppos.mask_token_type != "param":
            idle.append(self.encoder.posmask_token)
        return idle

    def forward(self, batch: dict, values: dict) -> dict:
        """``{"loss", "pos_ce": the weighted smoothed cross-entropy, "pos_acc": top-1 on the dropped patches}``;
        ``values["sigma"]`` is this iteration's smoothing."""
        dp = self.cfg.droppos
        images, ids_keep, dropped = batch["images"], batch["ids_keep"], batch["pos_dropped"]
        tokens = encode_visible(self.encoder, images, ids_keep, dropped, dp.mask_token_type, batch.get("pos_source"))
        logits = self.decoder(tokens)[:, self.encoder.num_prefix_tokens :]
        weights = dropped.float()
        if dp.attentive:
            weights = weights * self.attention_weights(images, ids_keep)
        loss = droppos_loss(logits, self.targets(values["sigma"], logits.device)[ids_keep], weights)
        return {
            "loss": loss + zero_from(self.idle_parameters()),
            "pos_ce": loss,
            "pos_acc": position_accuracy(logits, ids_keep, dropped),
        }

    def export_extras(self, output_dir: str) -> list[str]:
        """``droppos_head.pth`` beside ``backbone.pth``: the decoder's weights and what rebuilds it
        (:func:`load_droppos_head`)."""
        path = os.path.join(output_dir, HEAD_FILE)
        meta = dict(self.decoder.config, grid=list(self.grid), mask_token_type=self.cfg.droppos.mask_token_type)
        meta["prefix_tokens"] = self.encoder.num_prefix_tokens
        state = {k: v.detach().float().cpu().clone() for k, v in self.decoder.state_dict().items()}
        atomic_torch_save({"format": HEAD_FORMAT, "version": 1, "decoder": state, "meta": meta}, path)
        return [path]


def load_droppos_head(path_or_obj, map_location="cpu") -> tuple[DropPosDecoder, dict]:
    """Rebuild the position decoder written by :meth:`DropPos.export_extras` (a path or the loaded dict)."""
    obj = path_or_obj
    if not isinstance(obj, dict):
        obj = torch.load(path_or_obj, map_location=map_location, weights_only=True)
    if not (isinstance(obj, dict) and obj.get("format") == HEAD_FORMAT):
        raise ValueError(f"not a DropPos head file (format != {HEAD_FORMAT!r})")
    m = obj["meta"]
    decoder = DropPosDecoder(m["embed_dim"], m["num_positions"], m["dim"], m["depth"], m["heads"], m["norm_eps"])
    decoder.load_state_dict(obj["decoder"], strict=True)
    return decoder, m
