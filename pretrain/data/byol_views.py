"""BYOL's two-view augmentation with the crop boxes recorded, for CR2PQ (docs/cr2pq.md).

Per image, two independent ``RandomResizedCrop`` s (area ``scale``, aspect 3/4-4/3, bicubic, both resized to
``size x size``) and horizontal flips with probability ``flip_prob``; then BYOL's photometric recipe (Grill et al.
2020, its Table 6), asymmetric between the two views:

- colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with probability 0.8;
- grayscale with probability 0.2;
- Gaussian blur, sigma ~ U(0.1, 2.0), kernel 23 px at 224 (a tenth of the side, odd) with probability
  ``blur_prob = (view A, view B)``, BYOL's (1.0, 0.1);
- solarisation (threshold 128) with probability ``solarize_prob``, BYOL's (0.0, 0.2);

then ImageNet normalisation. View A is BYOL's first view (always blurred, never solarised), view B its second.

The output has the keys :class:`~pretrain.data.dataset.SSLDataset` expects of a crop augmentation:
``global_crops`` ``[A, B]``, ``global_boxes`` ``(2, 4)`` ``(x0, y0, x1, y1)`` in normalised image coordinates before
flipping, ``global_flips`` ``(2,)`` and empty local crops. All randomness comes from torch's global RNG, which
``SSLDataset`` seeds per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .multicrop import CROP_RATIO
from .normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BYOL_BLUR_PROB", "BYOL_SOLARIZE_PROB", "BYOLTwoViews", "blur_kernel_size"]

#: BYOL's blur and solarisation probabilities of (view 1, view 2).
BYOL_BLUR_PROB = (1.0, 0.1)
BYOL_SOLARIZE_PROB = (0.0, 0.2)


def blur_kernel_size(size: int) -> int:
    """BYOL's blur kernel: a tenth of the crop side, made odd (23 px at 224)."""
    return 2 * round(size / 20) + 1


def _pair(name: str, value) -> tuple[float, float]:
    out = tuple(float(v) for v in value)
    if len(out) != 2 or not all(0.0 <= v <= 1.0 for v in out):
        raise ValueError(f"{name} must be 2 probabilities in [0, 1] (view A, view B), got {value!r}")
    return out


class BYOLTwoViews:
    """Image -> two BYOL views with their boxes and flips (module docstring)."""

    def __init__(
        self,
        size: int = 224,
        scale: Sequence[float] = (0.08, 1.0),
        flip_prob: float = 0.5,
        blur_prob: Sequence[float] = BYOL_BLUR_PROB,
        solarize_prob: Sequence[float] = BYOL_SOLARIZE_PROB,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale!r}")
        self.flip_prob = float(flip_prob)
        self.blur_prob, self.solarize_prob = _pair("blur_prob", blur_prob), _pair("solarize_prob", solarize_prob)
        self.mean, self.std = tuple(mean), tuple(std)
        self.views = [self._photometric(i) if photometric else None for i in range(2)]

    def _photometric(self, view: int) -> transforms.Compose:
        blur = transforms.GaussianBlur(kernel_size=blur_kernel_size(self.size), sigma=(0.1, 2.0))
        return transforms.Compose(
            [
                transforms.RandomApply(
                    [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
                ),
                transforms.RandomGrayscale(p=0.2),
                transforms.RandomApply([blur], p=self.blur_prob[view]),
                transforms.RandomSolarize(threshold=128, p=self.solarize_prob[view]),
            ]
        )

    def _view(self, img: Image.Image, view: int):
        width, height = img.size
        i, j, h, w = transforms.RandomResizedCrop.get_params(img, list(self.scale), list(CROP_RATIO))
        crop = TF.resized_crop(img, i, j, h, w, [self.size, self.size], interpolation=InterpolationMode.BICUBIC)
        flip = bool(torch.rand(1).item() < self.flip_prob)
        if flip:
            crop = TF.hflip(crop)
        if self.views[view] is not None:
            crop = self.views[view](crop)
        box = (j / width, i / height, (j + w) / width, (i + h) / height)
        return TF.normalize(TF.to_tensor(crop), self.mean, self.std), box, flip

    def __call__(self, img: Image.Image) -> dict:
        if img.mode != "RGB":
            img = img.convert("RGB")
        crops, boxes, flips = zip(*(self._view(img, v) for v in range(2)))
        return {
            "global_crops": list(crops),
            "local_crops": [],
            "global_boxes": torch.tensor(boxes, dtype=torch.float32),
            "global_flips": torch.tensor(flips, dtype=torch.bool),
            "local_boxes": torch.zeros(0, 4),
            "local_flips": torch.zeros(0, dtype=torch.bool),
        }
