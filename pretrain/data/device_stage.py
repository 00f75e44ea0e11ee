"""The batch's last data stage on the training device (``crops.photometric_on=device``, docs/fidelity.md).

The collated batch arrives on the device with uint8 crops and each crop's photometric parameters
(``global_photometric`` / ``local_photometric``, drawn in the worker). :class:`DeviceAugmentation` applies the
photometric augmentation batched (:func:`pretrain.data.photometric.apply`), then ``ToTensor`` + ``Normalize``,
and drops the parameters: the method receives the same batch as with ``photometric_on=worker``. It runs under
``torch.no_grad``; no gradient flows into the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .multicrop import BLUR_KERNEL
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .photometric import apply, normalize

__all__ = ["DeviceAugmentation", "device_augmentation"]

_GROUPS = ("global", "local")


class DeviceAugmentation:
    """uint8 crops + parameters -> photometrically augmented, normalised float32 crops, on the crops' device."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, kernel_size: int = BLUR_KERNEL
    ):
        self.mean, self.std, self.kernel_size = tuple(mean), tuple(std), int(kernel_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std}, kernel_size={self.kernel_size})"

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        out = dict(batch)
        for group in _GROUPS:
            crops, key = batch[f"{group}_crops"], f"{group}_photometric"
            if key not in batch:
                raise KeyError(f"batch has no {key!r}: photometric_on=device needs the workers' uint8 crops")
            if crops.dtype != torch.uint8:
                raise TypeError(f"{group}_crops must be uint8 with photometric_on=device, got {crops.dtype}")
            out[f"{group}_crops"] = normalize(apply(crops, out.pop(key), self.kernel_size), self.mean, self.std)
        return out


def device_augmentation(cfg) -> DeviceAugmentation | None:
    """The device stage of the configured run, or None when the workers do the photometric augmentation."""
    if cfg.crops.get("photometric_on", "worker") != "device":
        return None
    return DeviceAugmentation()
