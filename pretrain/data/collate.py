"""Batch collation with content / position masks for the student's global crops (docs/method.md §3).

Crops are stacked **crop-major** as in DINOv2: all samples' crop 0, then all samples' crop 1, ... Row
``c * B + b`` of ``global_crops`` (and of the boxes, flips and masks) is crop ``c`` of sample ``b``.

Of the ``n_global * B`` global crops, ``n_masked = round(n_global * B * mask_probability)`` are masked,
``n_content = round(n_masked * content_fraction)`` of them with a content (``content_shape``) mask and the
others with a position (``pos_shape``) mask; no crop gets both. ``round`` is Python's built-in (half to
even). Which crops get which kind is a random permutation. Mask ratios are stratified per kind as in
DINOv2: with ``m`` crops of a kind, ``probs = linspace(r_min, r_max, m + 1)`` and the i-th of them (in the
random order) gets ``int(N * U(probs[i], probs[i + 1]))`` patches, clamped to
``[ceil(r_min * N), floor(r_max * N)]`` so that the realised ratio stays inside ``mask_ratio``.

All randomness comes from a ``torch.Generator`` seeded by mixing the samples' ``"seed"`` fields (splitmix64,
see :func:`pretrain.seeding.mix_seeds`), so the same samples give the same masks in any process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pretrain.data.masking import BoxMaskGenerator, CrossMaskGenerator, check_grid_size
from pretrain.data.photometric import NUM_COLUMNS
from pretrain.seeding import mix_seeds

__all__ = ["MASK_SHAPES", "MaskingCollator", "stratified_mask_counts"]

MASK_SHAPES = ("box", "cross")

#: Salt mixed into the collator's seed so that its stream differs from the samples' own streams.
_COLLATE_SALT = 0xC011A7E


def stratified_mask_counts(
    m: int, num_patches: int, mask_ratio: Sequence[float], generator: torch.Generator | None = None
) -> list[int]:
    """Patch counts for ``m`` masked crops with ratios stratified over ``mask_ratio`` (DINOv2's rule).

    The i-th count is ``int(N * U(probs[i], probs[i+1]))`` with ``probs = linspace(r_min, r_max, m + 1)``,
    clamped to ``[ceil(r_min * N), floor(r_max * N)]``.
    """
    r_min, r_max = float(mask_ratio[0]), float(mask_ratio[1])
    lo = math.ceil(r_min * num_patches - 1e-9)
    hi = math.floor(r_max * num_patches + 1e-9)
    if lo > hi:
        raise ValueError(
            f"mask_ratio {tuple(mask_ratio)} admits no integer patch count on a grid of {num_patches} patches"
        )
    if m == 0:
        return []
    probs = torch.linspace(r_min, r_max, m + 1, dtype=torch.float64)
    u = torch.rand(m, generator=generator, dtype=torch.float64)
    ratios = probs[:-1] + (probs[1:] - probs[:-1]) * u
    return [min(hi, max(lo, int(num_patches * r))) for r in ratios.tolist()]


def _stack_crops(crops: list[torch.Tensor]) -> torch.Tensor:
    """``(n, 3, H, W)`` of ``n`` crops. uint8 crops (``photometric_on="device"``) are stacked channels-last: the
    workers' crops are ``(3, H, W)`` views of ``(H, W, 3)`` images, so this is one plain copy per crop."""
    if crops[0].dtype == torch.uint8:
        return torch.stack([c.permute(1, 2, 0) for c in crops]).permute(0, 3, 1, 2)
    return torch.stack(crops)


def _make_generator(shape: str, grid_size: tuple[int, int]):
    if shape == "box":
        return BoxMaskGenerator(grid_size)
    if shape == "cross":
        return CrossMaskGenerator(grid_size)
    raise ValueError(f"mask shape must be one of {MASK_SHAPES}, got {shape!r}")


class MaskingCollator:
    """Collate :class:`~pretrain.data.dataset.SSLDataset` samples and draw the global crops' masks.

    Args:
        grid_size: ``(gh, gw)`` patch grid of a global crop (global_size // patch_size per axis).
        mask_ratio: ``(min, max)`` fraction of patches masked in a masked crop.
        mask_probability: fraction of the batch's global crops that are masked at all (DINOv2: 0.5).
        content_fraction: share of the masked crops that get content masking; the rest get position
            masking (1.0 = no position masking, DINOv2).
        content_shape, pos_shape: ``"box"`` (block-wise) or ``"cross"`` for each kind of mask.

    Output dict: ``global_crops`` ``(n_global*B, 3, H, W)``, ``local_crops`` ``(n_local*B, 3, h, w)``
    (``(0, 3, 0, 0)`` without local crops), ``global_boxes`` ``(n_global*B, 4)``, ``global_flips``
    ``(n_global*B,)`` bool, ``local_boxes``, ``local_flips``, ``content_masks`` / ``pos_masks``
    ``(n_global*B, N)`` bool (row-major patches), ``n_global``, ``n_local`` ints. Samples with photometric
    parameters (``photometric_on="device"``: uint8 crops) add ``global_photometric`` / ``local_photometric``
    ``(n*B, NUM_COLUMNS)``, stacked crop-major like the crops.
    """

    def __init__(
        self,
        grid_size,
        mask_ratio: Sequence[float] = (0.1, 0.5),
        mask_probability: float = 1.0,
        content_fraction: float = 0.5,
        content_shape: str = "box",
        pos_shape: str = "cross",
    ):
        self.grid_size = check_grid_size(grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        try:
            r_min, r_max = (float(v) for v in mask_ratio)
        except (TypeError, ValueError):
            raise ValueError(f"mask_ratio must be a pair (min, max), got {mask_ratio!r}") from None
        if not 0.0 <= r_min <= r_max <= 1.0:
            raise ValueError(f"mask_ratio must satisfy 0 <= min <= max <= 1, got {mask_ratio!r}")
        self.mask_ratio = (r_min, r_max)
        stratified_mask_counts(0, self.num_patches, self.mask_ratio)  # validates the grid / ratio pair
        if not 0.0 <= float(mask_probability) <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability!r}")
        if not 0.0 <= float(content_fraction) <= 1.0:
            raise ValueError(f"content_fraction must be in [0, 1], got {content_fraction!r}")
        self.mask_probability = float(mask_probability)
        self.content_fraction = float(content_fraction)
        self.content_shape, self.pos_shape = content_shape, pos_shape
        self.content_generator = _make_generator(content_shape, self.grid_size)
        self.pos_generator = _make_generator(pos_shape, self.grid_size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid_size={self.grid_size}, mask_ratio={self.mask_ratio}, "
            f"mask_probability={self.mask_probability}, content_fraction={self.content_fraction}, "
            f"content_shape={self.content_shape!r}, pos_shape={self.pos_shape!r})"
        )

    def batch_seed(self, samples: Sequence[dict]) -> int:
        """The 63-bit seed of the batch's mask generator, a deterministic mix of the samples' seeds."""
        seeds = []
        for i, s in enumerate(samples):
            if "seed" not in s:
                raise ValueError(f"sample {i} has no 'seed' field; MaskingCollator needs SSLDataset samples")
            seeds.append(int(s["seed"]))
        return mix_seeds(_COLLATE_SALT, len(seeds), *seeds)

    def plan(self, n_crops: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        """Per-crop patch counts for content and position masks (0 = that kind not applied)."""
        n_masked = round(n_crops * self.mask_probability)
        n_content = round(n_masked * self.content_fraction)
        perm = torch.randperm(n_crops, generator=generator).tolist()
        content_counts = [0] * n_crops
        pos_counts = [0] * n_crops
        content_ids, pos_ids = perm[:n_content], perm[n_content:n_masked]
        for ids, counts in ((content_ids, content_counts), (pos_ids, pos_counts)):
            for crop, k in zip(ids, stratified_mask_counts(len(ids), self.num_patches, self.mask_ratio, generator)):
                counts[crop] = k
        return content_counts, pos_counts

    def __call__(self, samples: Sequence[dict]) -> dict:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty batch")
        n_global = len(samples[0]["global_crops"])
        n_local = len(samples[0]["local_crops"])
        for i, s in enumerate(samples):
            if len(s["global_crops"]) != n_global or len(s["local_crops"]) != n_local:
                raise ValueError(
                    f"sample {i} has {len(s['global_crops'])} global / {len(s['local_crops'])} local crops, "
                    f"sample 0 has {n_global} / {n_local}"
                )
        batch = len(samples)
        global_crops = _stack_crops([s["global_crops"][c] for c in range(n_global) for s in samples])
        if n_local:
            local_crops = _stack_crops([s["local_crops"][c] for c in range(n_local) for s in samples])
        else:
            local_crops = global_crops.new_zeros((0, 3, 0, 0))

        def crop_major(key: str, n: int, tail: tuple, dtype) -> torch.Tensor:
            if n == 0:
                return torch.zeros((0,) + tail, dtype=dtype)
            return torch.stack([torch.as_tensor(s[key][c]) for c in range(n) for s in samples]).to(dtype)

        generator = torch.Generator().manual_seed(self.batch_seed(samples))
        n_crops = n_global * batch
        content_counts, pos_counts = self.plan(n_crops, generator)
        content_masks = torch.zeros(n_crops, self.num_patches, dtype=torch.bool)
        pos_masks = torch.zeros(n_crops, self.num_patches, dtype=torch.bool)
        for i in range(n_crops):
            if content_counts[i]:
                content_masks[i] = self.content_generator(content_counts[i], generator).flatten()
            elif pos_counts[i]:
                pos_masks[i] = self.pos_generator(pos_counts[i], generator).flatten()

        out = {
            "global_crops": global_crops,
            "local_crops": local_crops,
            "global_boxes": crop_major("global_boxes", n_global, (4,), torch.float32),
            "global_flips": crop_major("global_flips", n_global, (), torch.bool),
            "local_boxes": crop_major("local_boxes", n_local, (4,), torch.float32),
            "local_flips": crop_major("local_flips", n_local, (), torch.bool),
            "content_masks": content_masks,
            "pos_masks": pos_masks,
            "n_global": n_global,
            "n_local": n_local,
        }
        if "global_photometric" in samples[0]:  # photometric_on="device": the crops' parameters, crop-major
            out["global_photometric"] = crop_major("global_photometric", n_global, (NUM_COLUMNS,), torch.float32)
            out["local_photometric"] = crop_major("local_photometric", n_local, (NUM_COLUMNS,), torch.float32)
        return out
