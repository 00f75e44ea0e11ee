"""Position and scale augmentation: place an image's crops inside the virtual image (docs/method.md §2).

Per image, all of its crop boxes (original-image coordinates in [0, 1]) are mapped by one shared similarity
map into virtual-image coordinates, the frame of the learnable position field:

* ``A`` = smallest rectangle enclosing the crops (``enclose="all"``: global and local crops, our choice, so
  every sampled position lies inside the field; ``enclose="global"``: only the global crops, the paper's
  literal wording, and local crops may then map outside [0, 1]; they are left unclamped, the model's
  ``grid_sample(padding_mode="border")`` clamps them);
* ``s`` = target area of ``A`` in the virtual image: ``s_min + (s_max - s_min) * b`` with ``b ~ Beta(a, b)``
  (``mode="beta"``), ``s ~ U[s_min, s_max]`` (``"uniform"``) or ``s = s_max`` (``"const"``);
* ``k = min(sqrt(s / |A|), 1 / w_A, 1 / h_A)`` (the cap keeps ``A`` inside the virtual image);
* ``t_x ~ U(0, 1 - k w_A)``, ``t_y ~ U(0, 1 - k h_A)``;
* every box maps as ``x' = k (x - A.x0) + t_x``, ``y' = k (y - A.y0) + t_y``.

``mode="none"`` is the off switch: the image *is* the virtual image and boxes are returned unchanged (reported
as ``s = 1, k = 1, t = (A.x0, A.y0)``, which is the identity written in the form above).

All random draws use the ``torch.Generator`` passed in (or torch's global RNG when it is ``None``).
``torch.distributions.Beta`` cannot sample through a generator, so Beta variates are drawn here: for integer
shape parameters (the default Beta(2, 5)) exactly, as the a-th smallest of ``a + b - 1`` i.i.d. U(0, 1)
draws (the a-th order statistic of ``n`` uniforms is Beta(a, n - a + 1)); for non-integer ones as
``X / (X + Y)`` with ``X ~ Gamma(a)``, ``Y ~ Gamma(b)`` drawn by Marsaglia-Tsang rejection (also exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["SCALE_MODES", "ENCLOSE_MODES", "sample_beta", "sample_gamma", "sample_scale", "PositionScaleAugmentation"]

SCALE_MODES = ("beta", "uniform", "const", "none")
ENCLOSE_MODES = ("all", "global")

#: Integer Beta parameters up to this sum use the order-statistic sampler; larger ones use Gamma ratios.
_ORDER_STAT_MAX = 64


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def sample_gamma(shape: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws from Gamma(shape, 1) via Marsaglia-Tsang (2000), float64, using ``generator``.

    For ``shape < 1`` uses ``Gamma(shape) = Gamma(shape + 1) * U^(1/shape)``.
    """
    shape = float(shape)
    if not shape > 0 or not math.isfinite(shape):
        raise ValueError(f"Gamma shape must be a finite positive number, got {shape}")
    if shape < 1.0:
        boost = _uniform(n, generator).clamp_min(1e-300).pow(1.0 / shape)
        return sample_gamma(shape + 1.0, n, generator) * boost
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    pending = torch.arange(n)
    while pending.numel() > 0:
        m = pending.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64)
        u = _uniform(m, generator)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        log_v = torch.log(torch.where(ok, v, torch.ones_like(v)))
        accept = ok & (torch.log(u.clamp_min(1e-300)) < 0.5 * x * x + d - d * v + d * log_v)
        out[pending[accept]] = d * v[accept]
        pending = pending[~accept]
    return out


def sample_beta(a: float, b: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws from Beta(a, b) on [0, 1] (float64) using ``generator``; see the module docstring."""
    a, b = float(a), float(b)
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"Beta parameters must be finite and > 0, got ({a}, {b})")
    if n == 0:
        return torch.empty(0, dtype=torch.float64)
    if a.is_integer() and b.is_integer() and a + b - 1 <= _ORDER_STAT_MAX:
        # a-th order statistic of (a + b - 1) uniforms ~ Beta(a, b), exactly.
        u = _uniform(n * int(a + b - 1), generator).view(n, int(a + b - 1))
        return u.sort(dim=1).values[:, int(a) - 1].contiguous()
    x = sample_gamma(a, n, generator)
    y = sample_gamma(b, n, generator)
    return x / (x + y)


def _check_mode(mode: str, s_min: float, s_max: float, beta: Sequence[float]) -> tuple[str, float, float, tuple]:
    if mode not in SCALE_MODES:
        raise ValueError(f"scale mode must be one of {SCALE_MODES}, got {mode!r}")
    s_min, s_max = float(s_min), float(s_max)
    if not 0.0 < s_min <= s_max <= 1.0:
        raise ValueError(f"need 0 < s_min <= s_max <= 1, got s_min={s_min}, s_max={s_max}")
    try:
        a, b = (float(v) for v in beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a pair (a, b) of positive floats, got {beta!r}") from None
    if not (a > 0 and b > 0):
        raise ValueError(f"beta parameters must be > 0, got {beta!r}")
    return mode, s_min, s_max, (a, b)


def sample_scale(
    mode: str = "beta",
    s_min: float = 0.2,
    s_max: float = 1.0,
    beta: Sequence[float] = (2.0, 5.0),
    n: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``n`` target areas ``s`` (float64 tensor of shape ``(n,)``) for the given mode.

    ``beta``: ``s_min + (s_max - s_min) * Beta(*beta)``; ``uniform``: ``U[s_min, s_max]``; ``const``: ``s_max``;
    ``none``: 1 (the image is the whole virtual image). Only ``beta`` and ``uniform`` consume random numbers.
    """
    mode, s_min, s_max, (a, b) = _check_mode(mode, s_min, s_max, beta)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if mode == "beta":
        return s_min + (s_max - s_min) * sample_beta(a, b, n, generator)
    if mode == "uniform":
        return s_min + (s_max - s_min) * _uniform(n, generator)
    if mode == "const":
        return torch.full((n,), s_max, dtype=torch.float64)
    return torch.ones(n, dtype=torch.float64)


def _check_boxes(name: str, boxes) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (n, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")
    if boxes.numel() and not bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()):
        raise ValueError(f"{name} must have x1 > x0 and y1 > y0 for every box")
    return boxes


class PositionScaleAugmentation:
    """Map an image's crop boxes into the virtual image with one random scale and translation (docs/method.md §2).

    Args:
        mode: ``"beta"`` | ``"uniform"`` | ``"const"`` | ``"none"`` (see the module docstring).
        s_min, s_max: range of the target area ``s`` of the enclosing rectangle in the virtual image.
        beta: Beta parameters ``(a, b)`` for ``mode="beta"``.
        enclose: ``"all"`` (the enclosing rectangle covers global and local crops) or ``"global"``.

    ``__call__(global_boxes, local_boxes, generator=None)`` returns ``(new_global_boxes, new_local_boxes,
    info)``; the boxes keep their dtype, ``info`` is ``{"s", "k", "tx", "ty", "area_A"}`` as Python floats.
    Draw order per call: ``s`` (if random), then ``t_x``, then ``t_y``.
    """

    def __init__(
        self,
        mode: str = "beta",
        s_min: float = 0.2,
        s_max: float = 1.0,
        beta: Sequence[float] = (2.0, 5.0),
        enclose: str = "all",
    ):
        self.mode, self.s_min, self.s_max, self.beta = _check_mode(mode, s_min, s_max, beta)
        if enclose not in ENCLOSE_MODES:
            raise ValueError(f"enclose must be one of {ENCLOSE_MODES}, got {enclose!r}")
        self.enclose = enclose

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, s_min={self.s_min}, s_max={self.s_max}, "
            f"beta={self.beta}, enclose={self.enclose!r})"
        )

    def enclosing_box(self, global_boxes: torch.Tensor, local_boxes: torch.Tensor) -> tuple[float, ...]:
        """The rectangle ``A = (x0, y0, x1, y1)`` (floats) that the map is built around."""
        boxes = global_boxes if self.enclose == "global" else torch.cat([global_boxes, local_boxes.to(global_boxes)])
        if boxes.shape[0] == 0:
            raise ValueError("need at least one crop box to build the enclosing rectangle")
        b = boxes.double()
        return (b[:, 0].min().item(), b[:, 1].min().item(), b[:, 2].max().item(), b[:, 3].max().item())

    def __call__(
        self,
        global_boxes: torch.Tensor,
        local_boxes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        global_boxes = _check_boxes("global_boxes", global_boxes)
        if local_boxes is None:
            local_boxes = global_boxes.new_zeros((0, 4))
        local_boxes = _check_boxes("local_boxes", local_boxes)

        ax0, ay0, ax1, ay1 = self.enclosing_box(global_boxes, local_boxes)
        w_a, h_a = ax1 - ax0, ay1 - ay0
        area_a = w_a * h_a
        if self.mode == "none":
            info = {"s": 1.0, "k": 1.0, "tx": ax0, "ty": ay0, "area_A": area_a}
            return global_boxes.clone(), local_boxes.clone(), info

        s = sample_scale(self.mode, self.s_min, self.s_max, self.beta, 1, generator).item()
        k = min(math.sqrt(s / area_a), 1.0 / w_a, 1.0 / h_a)
        u = _uniform(2, generator)
        tx = u[0].item() * max(0.0, 1.0 - k * w_a)
        ty = u[1].item() * max(0.0, 1.0 - k * h_a)

        def _map(boxes: torch.Tensor) -> torch.Tensor:
            b = boxes.double()
            offset = torch.tensor([ax0, ay0, ax0, ay0], dtype=torch.float64)
            shift = torch.tensor([tx, ty, tx, ty], dtype=torch.float64)
            return (k * (b - offset) + shift).to(boxes.dtype)

        info = {"s": float(s), "k": float(k), "tx": float(tx), "ty": float(ty), "area_A": float(area_a)}
        return _map(global_boxes), _map(local_boxes), info
