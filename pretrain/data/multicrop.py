"""Multi-crop augmentation that also reports where every crop came from (docs/method.md §2, §5).

Every crop is described by its box ``(x0, y0, x1, y1)`` in normalised coordinates of the *original* image
(``x = column / width``, ``y = row / height``, both in [0, 1]) and a horizontal-flip flag. The box is the
region ``RandomResizedCrop`` cut out, *before* flipping; the model reverses the x order of its position
samples for flipped crops so that positions stay attached to the pixels they came from.

Photometric augmentations follow DINOv2's code: colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8 and grayscale with
p=0.2 (``grayscale_prob``) on every crop; global crop 2 solarised (threshold 128) with p=0.2; Gaussian blur (kernel 9,
sigma ~ U(0.1, 2.0)) with the probabilities ``blur_prob = (global crop 1, global crop 2, local crops)``. The default
``(0.0, 0.9, 0.5)`` is what DINOv2's code applies: its ``GaussianBlur(p)`` hands ``1 - p`` to ``RandomApply``, so
its nominal 1.0 / 0.1 / 0.5 become 0.0 / 0.9 / 0.5 (docs/fidelity.md). ``(1.0, 0.1, 0.5)`` is DINOv2's paper.
Global crops after the second one get the global-crop-2 recipe.

All randomness comes from torch's global RNG (torchvision's transforms draw from it); ``SSLDataset`` seeds it
per sample inside a forked RNG scope, so a sample is reproducible from ``(seed, epoch, index)``.

``photometric_on="device"`` (``crops.photometric_on``, docs/fidelity.md): the worker draws every crop's box and flip
first (:meth:`MultiCropAugmentation.plan`, in the order the photometric-free worker path draws them), then every
crop's photometric parameters (:func:`pretrain.data.photometric.draw_params`, same distributions), and returns the
crops as uint8 ``(3, S, S)`` tensors with the parameters in ``global_photometric`` / ``local_photometric``; the
training loop applies them batched on its device and normalises (:mod:`pretrain.data.device_stage`). Because the
boxes are drawn before any pixel is needed, the image may be decoded at a reduced size
(:meth:`MultiCropAugmentation.draft_scale`, PIL's JPEG ``draft``) when every crop is downscaled by at least 2x:
the boxes stay those drawn on the original size, mapped onto the smaller decode (:meth:`render`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .photometric import COLOR_JITTER, NUM_COLUMNS, draw_params

#: Aspect-ratio range of the random resized crops (torchvision's and DINOv2's default).
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)

#: Taps of the Gaussian blur kernel (DINOv2's ``GaussianBlur``), on both paths.
BLUR_KERNEL = 9
#: Where the photometric augmentation runs (``crops.photometric_on``).
PHOTOMETRIC_ON = ("worker", "device")
#: Solarisation probability of global crops 2, 3, ... (crop 1 and local crops: 0).
SOLARIZE_PROB = 0.2

__all__ = [
    "BLUR_KERNEL",
    "CROP_RATIO",
    "DINOV2_CODE_BLUR_PROB",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PHOTOMETRIC_ON",
    "CropPlan",
    "MultiCropAugmentation",
]


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_scale(name: str, value) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) of floats, got {value!r}") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {value!r}")
    return lo, hi


def _check_stats(name: str, value, positive: bool) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 floats (one per RGB channel), got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name} must be 3 floats (one per RGB channel), got {value!r}")
    if positive and min(out) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return out


#: Blur probabilities ``(global crop 1, global crop 2, local crops)`` as DINOv2's code applies them.
DINOV2_CODE_BLUR_PROB = (0.0, 0.9, 0.5)


class _GaussianBlur(transforms.RandomApply):
    """With probability ``p``, a 9-tap Gaussian blur with sigma ~ U(0.1, 2.0)."""

    def __init__(self, p: float):
        super().__init__([transforms.GaussianBlur(kernel_size=BLUR_KERNEL, sigma=(0.1, 2.0))], p=p)


def check_blur_prob(value, name: str = "blur_prob") -> tuple[float, float, float]:
    """``value`` as 3 blur probabilities (global crop 1, global crop 2, local crops), each in [0, 1]."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 probabilities (global 1, global 2, local), got {value!r}") from None
    if len(out) != 3 or not all(0.0 <= v <= 1.0 for v in out):
        raise ValueError(f"{name} must be 3 probabilities in [0, 1] (global 1, global 2, local), got {value!r}")
    return out


@dataclass
class CropPlan:
    """Every random choice of one image's multi-crop, drawn before decoding: for global and local crops, the
    ``(top, left, height, width)`` pixel boxes in the original ``size = (width, height)``, the flips, and the
    photometric parameters (``(n, NUM_COLUMNS)``)."""

    size: tuple[int, int]
    global_boxes: list[tuple[int, int, int, int]]
    global_flips: list[bool]
    local_boxes: list[tuple[int, int, int, int]]
    local_flips: list[bool]
    global_photometric: torch.Tensor
    local_photometric: torch.Tensor


#: Crop-and-resize implementations of the device-mode worker (``crops.resize_backend``).
RESIZE_BACKENDS = ("pil", "torch")


def _torch_resized_crop(pixels: torch.Tensor, box, size: int, flip: bool) -> torch.Tensor:
    """``box = (top, left, height, width)`` of a ``(1, 3, H, W)`` uint8 image resized to ``size`` by torch's
    antialiased bicubic (PIL's filter, a = -0.5), flipped if asked: ``(3, size, size)`` uint8 over HWC memory."""
    top, left, height, width = box
    crop = pixels[:, :, top : top + height, left : left + width]
    out = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    if flip:
        out = out.flip(-1)
    return out[0]


def _size_stub(width: int, height: int) -> torch.Tensor:
    """A ``(1, height, width)`` tensor without storage (stride 0): what ``RandomResizedCrop.get_params`` reads of an
    image is its size, and the boxes are drawn before the image is decoded."""
    return torch.zeros(1, 1, 1).expand(1, height, width)


class MultiCropAugmentation:
    """DINOv2 multi-crop that returns crops together with their boxes and flip flags.

    Args:
        global_size: side of the square global crops (pixels).
        local_size: side of the square local crops (pixels).
        n_global: number of global crops (>= 1).
        n_local: number of local crops (>= 0).
        global_scale: ``(min, max)`` area fraction of the original image covered by a global crop.
        local_scale: ``(min, max)`` area fraction for local crops.
        mean, std: per-channel normalisation applied after ``to_tensor`` (values in [0, 1]).
        photometric: apply DINOv2's colour jitter / grayscale / blur / solarise. ``False`` keeps only the
            geometric part (crop, flip, bicubic resize) and normalisation.
        blur_prob: blur probability of global crop 1, global crop 2 (and later ones), and local crops.
        grayscale_prob: probability of turning a crop to grayscale (DINOv2: 0.2).
        photometric_on: ``"worker"`` (PIL transforms here, float crops) or ``"device"`` (uint8 crops and their
            drawn parameters; module docstring).
        reduced_decode: with ``"device"``, let :meth:`draft_scale` ask for a reduced-size JPEG decode.
        resize_backend: with ``"device"``: ``"pil"`` (PIL's bicubic, the reference) or ``"torch"`` (torch's uint8
            antialiased bicubic on the decoded image, channels-last: the same boxes and flips, pixels within one
            level of PIL's; much faster per core, ``benchmarks/RESULTS.md``). Reduced decodes always use PIL.

    Calling it on a PIL image returns a dict with ``global_crops`` (list of ``(3, S, S)`` float tensors),
    ``local_crops`` (list of ``(3, s, s)``), ``global_boxes`` ``(n_global, 4)`` / ``local_boxes``
    ``(n_local, 4)`` float32 boxes ``(x0, y0, x1, y1)`` in original-image normalised coordinates (before
    flipping), and ``global_flips`` / ``local_flips`` bool tensors. With ``photometric_on="device"`` the crops are
    uint8 and ``global_photometric`` ``(n_global, NUM_COLUMNS)`` / ``local_photometric`` hold their parameters
    (all-zero rows, i.e. no operation, when ``photometric`` is off).
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: Sequence[float] = (0.32, 1.0),
        local_scale: Sequence[float] = (0.05, 0.32),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        photometric: bool = True,
        blur_prob: Sequence[float] = DINOV2_CODE_BLUR_PROB,
        grayscale_prob: float = 0.2,
        photometric_on: str = "worker",
        reduced_decode: bool = False,
        resize_backend: str = "pil",
    ):
        self.global_size = _check_size("global_size", global_size)
        self.local_size = _check_size("local_size", local_size)
        if isinstance(n_global, bool) or not isinstance(n_global, int) or n_global < 1:
            raise ValueError(f"n_global must be an int >= 1, got {n_global!r}")
        if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0:
            raise ValueError(f"n_local must be an int >= 0, got {n_local!r}")
        self.n_global = n_global
        self.n_local = n_local
        self.global_scale = _check_scale("global_scale", global_scale)
        self.local_scale = _check_scale("local_scale", local_scale)
        self.mean = _check_stats("mean", mean, positive=False)
        self.std = _check_stats("std", std, positive=True)
        self.photometric = bool(photometric)
        self.blur_prob = check_blur_prob(blur_prob)
        if not 0.0 <= float(grayscale_prob) <= 1.0:
            raise ValueError(f"grayscale_prob must be in [0, 1], got {grayscale_prob!r}")
        self.grayscale_prob = float(grayscale_prob)
        if photometric_on not in PHOTOMETRIC_ON:
            raise ValueError(f"photometric_on must be one of {PHOTOMETRIC_ON}, got {photometric_on!r}")
        self.photometric_on = photometric_on
        self.reduced_decode = bool(reduced_decode) and photometric_on == "device"
        if resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {resize_backend!r}")
        if resize_backend == "torch" and photometric_on != "device":
            raise ValueError("resize_backend='torch' needs photometric_on='device' (the worker path stays PIL's)")
        self.resize_backend = resize_backend

        if self.photometric and photometric_on == "worker":
            color = transforms.Compose(
                [
                    transforms.RandomApply([transforms.ColorJitter(*COLOR_JITTER)], p=0.8),
                    transforms.RandomGrayscale(p=self.grayscale_prob),
                ]
            )
            p1, p2, pl = self.blur_prob
            self.blurs = {"global1": _GaussianBlur(p=p1), "global2": _GaussianBlur(p=p2), "local": _GaussianBlur(p=pl)}
            self._global1 = transforms.Compose([color, self.blurs["global1"]])
            self._global2 = transforms.Compose(
                [color, self.blurs["global2"], transforms.RandomSolarize(threshold=128, p=SOLARIZE_PROB)]
            )
            self._local = transforms.Compose([color, self.blurs["local"]])
        else:
            self.blurs = {}
            self._global1 = self._global2 = self._local = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(global_size={self.global_size}, local_size={self.local_size}, "
            f"n_global={self.n_global}, n_local={self.n_local}, global_scale={self.global_scale}, "
            f"local_scale={self.local_scale}, photometric={self.photometric}, blur_prob={self.blur_prob}, "
            f"photometric_on={self.photometric_on!r})"
        )

    def _crop(self, img: Image.Image, size: int, scale: tuple[float, float]):
        """Random resized crop + random flip; returns the PIL crop, its box and the flip flag."""
        width, height = img.size
        i, j, h, w = transforms.RandomResizedCrop.get_params(img, list(scale), list(CROP_RATIO))
        box = (j / width, i / height, (j + w) / width, (i + h) / height)
        crop = TF.resized_crop(img, i, j, h, w, [size, size], interpolation=InterpolationMode.BICUBIC)
        flip = bool(torch.rand(1).item() < 0.5)
        if flip:
            crop = TF.hflip(crop)
        return crop, box, flip

    def _finish(self, crop: Image.Image, photometric) -> torch.Tensor:
        if photometric is not None:
            crop = photometric(crop)
        return TF.normalize(TF.to_tensor(crop), self.mean, self.std)

    def __call__(self, img: Image.Image) -> dict:
        if not isinstance(img, Image.Image):
            raise TypeError(f"MultiCropAugmentation expects a PIL image, got {type(img).__name__}")
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.width < 1 or img.height < 1:
            raise ValueError(f"empty image of size {img.size}")
        if self.photometric_on == "device":
            return self.render(img, self.plan(img.size))

        global_crops, global_boxes, global_flips = [], [], []
        for c in range(self.n_global):
            crop, box, flip = self._crop(img, self.global_size, self.global_scale)
            global_crops.append(self._finish(crop, self._global1 if c == 0 else self._global2))
            global_boxes.append(box)
            global_flips.append(flip)

        local_crops, local_boxes, local_flips = [], [], []
        for _ in range(self.n_local):
            crop, box, flip = self._crop(img, self.local_size, self.local_scale)
            local_crops.append(self._finish(crop, self._local))
            local_boxes.append(box)
            local_flips.append(flip)

        return {
            "global_crops": global_crops,
            "local_crops": local_crops,
            "global_boxes": torch.tensor(global_boxes, dtype=torch.float32).reshape(self.n_global, 4),
            "local_boxes": torch.tensor(local_boxes, dtype=torch.float32).reshape(self.n_local, 4),
            "global_flips": torch.tensor(global_flips, dtype=torch.bool).reshape(self.n_global),
            "local_flips": torch.tensor(local_flips, dtype=torch.bool).reshape(self.n_local),
        }

    # ------------------------------------------------------------------ photometric_on="device"
    def _draw_boxes(self, stub: torch.Tensor, n: int, scale: tuple[float, float]):
        boxes, flips = [], []
        for _ in range(n):  # box then flip, per crop: the photometric-free worker path's order of draws
            boxes.append(tuple(transforms.RandomResizedCrop.get_params(stub, list(scale), list(CROP_RATIO))))
            flips.append(bool(torch.rand(1).item() < 0.5))
        return boxes, flips

    def _draw_photometric(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.photometric:
            return torch.zeros(self.n_global, NUM_COLUMNS), torch.zeros(self.n_local, NUM_COLUMNS)
        p1, p2, pl = self.blur_prob
        blur = [p1] + [p2] * (self.n_global - 1)
        solarize = [0.0] + [SOLARIZE_PROB] * (self.n_global - 1)
        g = draw_params(None, self.n_global, blur, solarize, self.grayscale_prob)
        loc = draw_params(None, self.n_local, pl, 0.0, self.grayscale_prob)
        return g, loc

    def plan(self, size: tuple[int, int]) -> CropPlan:
        """All random choices for an image of ``size = (width, height)``, from torch's global RNG."""
        stub = _size_stub(*size)
        global_boxes, global_flips = self._draw_boxes(stub, self.n_global, self.global_scale)
        local_boxes, local_flips = self._draw_boxes(stub, self.n_local, self.local_scale)
        g, loc = self._draw_photometric()
        return CropPlan(tuple(size), global_boxes, global_flips, local_boxes, local_flips, g, loc)

    def draft_scale(self, plan: CropPlan) -> int:
        """The largest JPEG reduction ``s`` in {1, 2, 4, 8} such that every crop of ``plan`` is downscaled by at
        least ``s`` along both axes (1 when ``reduced_decode`` is off)."""
        if not self.reduced_decode:
            return 1
        ratios = [min(h, w) / self.global_size for _, _, h, w in plan.global_boxes]
        ratios += [min(h, w) / self.local_size for _, _, h, w in plan.local_boxes]
        least = min(ratios)
        return next((s for s in (8, 4, 2) if least >= s), 1)

    @staticmethod
    def _resize(img: Image.Image, box, size: int, scale: int, flip: bool) -> torch.Tensor:
        top, left, height, width = box
        if scale == 1:
            crop = TF.resized_crop(img, top, left, height, width, [size, size], interpolation=InterpolationMode.BICUBIC)
        else:  # the same box on the 1/scale decode: draft pixel k covers original pixels [k s, (k + 1) s)
            region = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
            crop = img.resize((size, size), Image.Resampling.BICUBIC, box=region)
        if flip:
            crop = TF.hflip(crop)
        # (3, S, S) over the image's (S, S, 3) memory: the collator stacks such crops with one copy each
        return torch.from_numpy(np.array(crop)).permute(2, 0, 1)

    def render(self, img: Image.Image, plan: CropPlan) -> dict:
        """The crops of ``plan`` cut from ``img`` as uint8 tensors: ``img`` is the image of ``plan.size`` or its
        reduced decode at ``1/s`` (``ceil(width / s)`` x ``ceil(height / s)``, as PIL's JPEG draft gives)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        width, height = plan.size
        scale = next((s for s in (1, 2, 4, 8) if img.size == (-(-width // s), -(-height // s))), None)
        if scale is None:
            raise ValueError(f"image of size {img.size} is no 1/1, 1/2, 1/4 or 1/8 decode of the planned {plan.size}")

        if self.resize_backend == "torch" and scale == 1:
            pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]  # (1, 3, H, W) over HWC memory

            def crops(boxes, flips, size):
                return [_torch_resized_crop(pixels, b, size, f) for b, f in zip(boxes, flips)]
        else:

            def crops(boxes, flips, size):
                return [self._resize(img, b, size, scale, f) for b, f in zip(boxes, flips)]

        def norm_boxes(boxes, n):
            out = [(j / width, i / height, (j + w) / width, (i + h) / height) for i, j, h, w in boxes]
            return torch.tensor(out, dtype=torch.float32).reshape(n, 4)

        return {
            "global_crops": crops(plan.global_boxes, plan.global_flips, self.global_size),
            "local_crops": crops(plan.local_boxes, plan.local_flips, self.local_size),
            "global_boxes": norm_boxes(plan.global_boxes, self.n_global),
            "local_boxes": norm_boxes(plan.local_boxes, self.n_local),
            "global_flips": torch.tensor(plan.global_flips, dtype=torch.bool).reshape(self.n_global),
            "local_flips": torch.tensor(plan.local_flips, dtype=torch.bool).reshape(self.n_local),
            "global_photometric": plan.global_photometric,
            "local_photometric": plan.local_photometric,
        }
