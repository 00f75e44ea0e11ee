"""DINOv2's photometric augmentation, drawn per crop and applied batched on uint8 tensors (``crops.photometric_on``).

The worker path (:class:`~pretrain.data.multicrop.MultiCropAugmentation` with ``photometric_on="worker"``) runs
torchvision's PIL transforms on every crop. With ``photometric_on="device"`` the worker only draws each crop's
parameters (:func:`draw_params`, a few random numbers) and hands the crop over as uint8; :func:`apply` then runs
the same operations on a whole batch of crops on the training device. Both follow the same distributions
(docs/fidelity.md, "Photometric augmentation on the device"):

- colour jitter with probability ``jitter_prob`` (DINOv2: 0.8): brightness and contrast factors ~ U(0.6, 1.4),
  saturation ~ U(0.8, 1.2), hue shift ~ U(-0.1, 0.1), the four applied in a uniformly random order (a random
  permutation per crop, as ``torchvision.transforms.ColorJitter``);
- grayscale with probability ``grayscale_prob``;
- Gaussian blur with probability ``blur_prob``, sigma ~ U(0.1, 2.0), a ``kernel_size``-tap kernel (9 in multi-crop);
- solarisation (pixels >= 128 inverted) with probability ``solarize_prob``;

in that order. Each operation reproduces torchvision's tensor kernel on uint8 images, including where it
quantises: after brightness, contrast and saturation the values are clamped to [0, 255] and truncated (a uint8
cast), grayscale truncates ``0.2989 R + 0.587 G + 0.114 B``, hue works on ``x / 255`` and truncates
``255.999 * x``, blur (reflect padding, normalised Gaussian taps) rounds. The batch is carried as float32 holding
integers, so one crop's result equals ``torchvision.transforms.functional`` on that crop up to float rounding
(at most 1/255, tests/pretrain/data/test_photometric.py).

A crop's parameters are one row of a float32 tensor with the columns of :data:`COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "BLUR_SIGMA",
    "COLOR_JITTER",
    "COLUMNS",
    "NUM_COLUMNS",
    "apply",
    "draw_params",
    "gaussian_kernels",
    "normalize",
]

#: Colour-jitter strengths (brightness, contrast, saturation, hue), DINOv2's.
COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)
#: Range of the blur's sigma (DINOv2's ``GaussianBlur``).
BLUR_SIGMA = (0.1, 2.0)
#: Parameter columns: jitter applied; the jitter order (4 op indices: 0 brightness, 1 contrast, 2 saturation,
#: 3 hue); the four jitter factors; grayscale; blur; sigma; solarise.
COLUMNS = ("jitter", "order0", "order1", "order2", "order3", "brightness", "contrast", "saturation", "hue")
COLUMNS = COLUMNS + ("grayscale", "blur", "sigma", "solarize")
NUM_COLUMNS = len(COLUMNS)
_C = {name: i for i, name in enumerate(COLUMNS)}

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _probabilities(value, n: int, name: str) -> list[float]:
    """``value`` (a scalar or one per crop) as ``n`` probabilities in [0, 1]."""
    p = [float(v) for v in value] if isinstance(value, (list, tuple, torch.Tensor)) else [float(value)]
    if len(p) == 1:
        p = p * n
    if len(p) != n or not all(0.0 <= v <= 1.0 for v in p):
        raise ValueError(f"{name} must be one probability in [0, 1] or {n} of them, got {value!r}")
    return p


_LOW = (1 - COLOR_JITTER[0], 1 - COLOR_JITTER[1], 1 - COLOR_JITTER[2], -COLOR_JITTER[3], BLUR_SIGMA[0])
_HIGH = (1 + COLOR_JITTER[0], 1 + COLOR_JITTER[1], 1 + COLOR_JITTER[2], COLOR_JITTER[3], BLUR_SIGMA[1])


def draw_params(
    generator: torch.Generator | None,
    n: int,
    blur_prob: float | Sequence[float],
    solarize_prob: float | Sequence[float] = 0.0,
    grayscale_prob: float | Sequence[float] = 0.2,
    jitter_prob: float | Sequence[float] = 0.8,
) -> torch.Tensor:
    """The photometric parameters of ``n`` crops, ``(n, NUM_COLUMNS)`` float32, drawn from ``generator`` (None:
    torch's global generator) with one ``torch.rand(n, 13)`` call: 4 uniforms for the flags (jitter, grayscale,
    blur, solarise: applied when below the probability), 4 whose ranks give the jitter order (a uniformly random
    permutation), 4 for the jitter factors and 1 for sigma. Each probability is a scalar or one value per crop."""
    probs = [
        _probabilities(p, n, name)
        for p, name in (
            (jitter_prob, "jitter_prob"),
            (grayscale_prob, "grayscale_prob"),
            (blur_prob, "blur_prob"),
            (solarize_prob, "solarize_prob"),
        )
    ]
    u = torch.rand(n, 13, generator=generator, dtype=torch.float64)
    flags = (u[:, :4] < torch.tensor(probs, dtype=torch.float64).T).float()
    lo, hi = torch.tensor(_LOW, dtype=torch.float64), torch.tensor(_HIGH, dtype=torch.float64)
    values = lo + (hi - lo) * u[:, 8:13]  # brightness, contrast, saturation, hue, sigma
    out = torch.empty(n, NUM_COLUMNS, dtype=torch.float32)
    out[:, _C["jitter"]] = flags[:, 0]
    out[:, _C["order0"] : _C["order3"] + 1] = u[:, 4:8].argsort(dim=1).float()
    out[:, _C["brightness"] : _C["hue"] + 1] = values[:, :4].float()
    out[:, _C["grayscale"]] = flags[:, 1]
    out[:, _C["blur"]] = flags[:, 2]
    out[:, _C["sigma"]] = values[:, 4].float()
    out[:, _C["solarize"]] = flags[:, 3]
    return out


# ------------------------------------------------------------------------------------------- batched operations
def _quantize(x: torch.Tensor) -> torch.Tensor:
    """A uint8 cast of float values: clamp to [0, 255], truncate."""
    return x.clamp(0.0, 255.0).floor()


def _gray(x: torch.Tensor) -> torch.Tensor:
    """``(n, 1, H, W)`` truncated luma of ``(n, 3, H, W)`` integer-valued floats."""
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).floor().unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return _quantize(f * x + (1.0 - f) * other)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _quantize(factor.view(-1, 1, 1, 1) * x)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """HSV of ``(n, 3, H, W)`` RGB in [0, 1], hue in [0, 1) (the conversion torchvision and PIL use)."""
    r, g, b = rgb.unbind(dim=1)
    maxc, minc = rgb.amax(dim=1), rgb.amin(dim=1)
    delta = maxc - minc
    flat = delta == 0
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """RGB of ``(n, 3, H, W)`` HSV: channel ``c`` is ``v - v s clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n_c + 6 h) mod 6``, ``n = (5, 3, 1)``: the six-sector formula in closed form, without a per-pixel
    table lookup."""
    h, s, v = hsv.unbind(dim=1)
    h6, vs = h * 6.0, v * s
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + offset, 6.0)
        channels.append(v - vs * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(channels, dim=1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x / 255.0)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    rgb = _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))
    return (rgb * (256.0 - 1e-3)).floor()


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``(n, kernel_size)`` normalised 1-D Gaussian taps at offsets ``-(k-1)/2 .. (k-1)/2``, one row per sigma."""
    half = (kernel_size - 1) * 0.5
    offsets = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur per crop with reflect padding, rounded to integers (torchvision's uint8 result)."""
    n, ch, height, width = x.shape
    k = gaussian_kernels(sigma, kernel_size).repeat_interleave(ch, dim=0)  # (n * ch, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * ch, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(n * ch, 1, 1, kernel_size), groups=n * ch)
    y = F.conv2d(y, k.view(n * ch, 1, kernel_size, 1), groups=n * ch)
    return torch.round(y).reshape(n, ch, height, width)


def _where_rows(x: torch.Tensor, rows: torch.Tensor, fn) -> torch.Tensor:
    """``x`` (the working copy of :func:`apply`) with ``fn(x[rows], rows)`` written in place into the rows selected
    by the bool mask ``rows``."""
    idx = rows.nonzero().flatten()
    if idx.numel():
        x[idx] = fn(x[idx], idx)
    return x


def _jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Colour jitter: at step k, each jittered crop gets the operation its permutation puts at position k."""
    on = params[:, _C["jitter"]] > 0.5
    order = params[:, _C["order0"] : _C["order3"] + 1].round().long()
    factors = params[:, _C["brightness"] : _C["hue"] + 1]
    for step in range(4):
        for op, fn in enumerate(_JITTER_OPS):
            x = _where_rows(x, on & (order[:, step] == op), lambda xs, i, fn=fn, op=op: fn(xs, factors[i, op]))
    return x


def apply(crops: torch.Tensor, params: torch.Tensor, kernel_size: int = 9) -> torch.Tensor:
    """DINOv2's photometric augmentation of ``(n, 3, H, W)`` uint8 crops with their ``(n, NUM_COLUMNS)`` parameters:
    jitter (random order), grayscale, blur, solarise. Returns ``(n, 3, H, W)`` float32 holding integers in
    [0, 255], on the crops' device."""
    if crops.dim() != 4 or crops.shape[1] != 3:
        raise ValueError(f"crops must be (n, 3, H, W), got {tuple(crops.shape)}")
    if params.shape != (crops.shape[0], NUM_COLUMNS):
        raise ValueError(f"params must be ({crops.shape[0]}, {NUM_COLUMNS}), got {tuple(params.shape)}")
    params = params.to(crops.device, torch.float32)
    x = crops.to(torch.float32, copy=True)  # the working copy the operations write into
    if crops.shape[0] == 0:
        return x
    x = _jitter(x, params)
    x = _where_rows(x, params[:, _C["grayscale"]] > 0.5, lambda xs, i: _gray(xs).expand_as(xs))
    sigma = params[:, _C["sigma"]]
    x = _where_rows(x, params[:, _C["blur"]] > 0.5, lambda xs, i: _blur(xs, sigma[i], kernel_size))
    return _where_rows(x, params[:, _C["solarize"]] > 0.5, lambda xs, i: torch.where(xs >= 128, 255.0 - xs, xs))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel: ``ToTensor`` then ``Normalize`` of integer-valued ``(n, 3, H, W)``."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - m) / s
