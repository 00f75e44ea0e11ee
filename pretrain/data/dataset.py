"""The pretraining dataset: image -> multi-crop (boxes, flips) -> position/scale augmentation.

Every sample is a pure function of ``(seed, epoch, index)``: a per-sample seed is derived by splitmix64
mixing (:func:`mix_seeds`; no salted ``hash()``), torch's CPU generator and Python's ``random`` are seeded
with it inside a forked scope, so the caller's global RNG state is unchanged afterwards and the sample does
not depend on which DataLoader worker produced it. The position/scale augmentation draws from its own
``torch.Generator`` seeded from the same per-sample seed.

Unreadable images are replaced deterministically: for a bad ``index``, candidates
``(index + 1 + attempt * 7919) % len`` for ``attempt = 0 .. max_attempts - 1`` are tried, then a linear scan
from ``index + 1``; the sample keeps the requested ``index`` (and its seed) and reports the image actually
used in ``source_index``. ``num_substitutions`` counts replacements in *this* process; the number of bad files
is best obtained in the main process with :meth:`SSLDataset.scan_for_corrupt` (or
``ImageFolderDataset(validate=True)``), which the engine reports as "skipped K of N files".

Note: ``set_epoch`` changes the attribute of this object only; DataLoader workers see it if they are created
after the call (``persistent_workers=False``, the default), which is how the engine uses it.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from pretrain.data.folder import ImageFolderDataset
from pretrain.data.multicrop import MultiCropAugmentation
from pretrain.data.position_aug import PositionScaleAugmentation
from pretrain.seeding import mix_seeds

__all__ = ["SSLDataset"]

_POSITION_SALT = 0x9051A06


class SSLDataset(Dataset):
    """Images -> DINOv2 multi-crop with boxes and flips -> position/scale-augmented boxes.

    Args:
        images: the image source.
        multicrop: crop augmentation (global/local crops, boxes, flips).
        position_aug: maps the boxes of one image into the virtual image.
        seed: base seed; sample seeds are ``mix_seeds(seed, epoch, index)``.
        max_attempts: strided substitution attempts for an unreadable image before the linear scan.

    ``__getitem__(index)`` returns ``{"global_crops", "local_crops", "global_boxes", "global_flips",
    "local_boxes", "local_flips", "index", "seed", "pos_info", "source_index"}`` (and the crops' photometric
    parameters with ``photometric_on="device"``); boxes are in virtual-image coordinates (after the position/scale
    augmentation).
    """

    def __init__(
        self,
        images: ImageFolderDataset,
        multicrop: MultiCropAugmentation,
        position_aug: PositionScaleAugmentation,
        seed: int = 0,
        max_attempts: int = 16,
    ):
        if len(images) == 0:
            raise ValueError("SSLDataset needs at least one image")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.images = images
        self.multicrop = multicrop
        self.position_aug = position_aug
        self.seed = int(seed)
        self.epoch = 0
        self.max_attempts = int(max_attempts)
        self.num_substitutions = 0

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops ``__getitem__`` produces."""
        self.epoch = int(epoch)

    def sample_seed(self, index: int, epoch: int | None = None) -> int:
        """The 63-bit seed of sample ``index`` in ``epoch`` (default: the current epoch)."""
        return mix_seeds(self.seed, self.epoch if epoch is None else epoch, index)

    def scan_for_corrupt(self) -> int:
        """Decode every image once in this process; returns the number of unreadable files."""
        return self.images.scan_for_corrupt()

    @property
    def num_skipped(self) -> int:
        """Unreadable files found so far in this process."""
        return self.images.num_skipped

    def _candidates(self, index: int):
        n = len(self.images)
        for attempt in range(self.max_attempts):
            yield (index + 1 + attempt * 7919) % n
        for offset in range(1, n):
            yield (index + offset) % n

    def _load(self, index: int, draft=None):
        img = self.images.load(index, draft)
        if img is not None:
            return img, index
        for candidate in self._candidates(index):
            img = self.images.load(candidate, draft)
            if img is not None:
                self.num_substitutions += 1
                return img, candidate
        raise RuntimeError(f"none of the {len(self.images)} images of {self.images.source!r} can be read")

    def _crops(self, index: int):
        """``(crops, source index)``. A multi-crop that plans before decoding (``photometric_on="device"``) draws its
        boxes from the header's size and may have the image decoded smaller (:meth:`MultiCropAugmentation.plan`);
        a substituted image is planned anew."""
        if getattr(self.multicrop, "photometric_on", "worker") != "device":
            img, source_index = self._load(index)
            return self.multicrop(img), source_index
        plans = []

        def draft(size):
            plans.append(self.multicrop.plan(size))
            return self.multicrop.draft_scale(plans[-1])

        img, source_index = self._load(index, draft)
        return self.multicrop.render(img, plans[-1]), source_index

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = int(index) % len(self)
        seed = self.sample_seed(index)
        py_state = random.getstate()
        try:
            # fork_rng(devices=[]) restores the CPU generator only, so seed that one alone (torch.manual_seed
            # would also reseed CUDA generators, whose state would then leak out of this scope).
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                random.seed(seed)
                crops, source_index = self._crops(index)
        finally:
            random.setstate(py_state)
        generator = torch.Generator().manual_seed(mix_seeds(seed, _POSITION_SALT))
        global_boxes, local_boxes, info = self.position_aug(crops["global_boxes"], crops["local_boxes"], generator)
        return {
            "global_crops": crops["global_crops"],
            "local_crops": crops["local_crops"],
            "global_boxes": global_boxes,
            "global_flips": crops["global_flips"],
            "local_boxes": local_boxes,
            "local_flips": crops["local_flips"],
            "index": index,
            "seed": seed,
            "pos_info": info,
            "source_index": source_index,
            **{k: crops[k] for k in ("global_photometric", "local_photometric") if k in crops},
        }
