"""Patch-mask generators for the student's global crops (docs/method.md §3).

* :class:`BoxMaskGenerator`: content masking, BEiT/DINOv2 block-wise masks (a union of random rectangles).
* :class:`CrossMaskGenerator`: position masking, a union of random 1-patch-thick crosses.

Both return a ``(gh, gw)`` bool mask (``True`` = masked) with **exactly** the requested number of patches and
draw every random number from the ``torch.Generator`` passed in (torch's global RNG if ``None``), so a mask
is a pure function of the generator's state.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["BoxMaskGenerator", "CrossMaskGenerator", "check_grid_size"]


def check_grid_size(grid_size) -> tuple[int, int]:
    if isinstance(grid_size, int) and not isinstance(grid_size, bool):
        grid_size = (grid_size, grid_size)
    try:
        gh, gw = grid_size
    except (TypeError, ValueError):
        raise ValueError(f"grid_size must be an int or a pair (gh, gw), got {grid_size!r}") from None
    for v in (gh, gw):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"grid_size entries must be positive ints, got {grid_size!r}")
    return gh, gw


def _check_count(num_masked, n: int) -> int:
    if isinstance(num_masked, torch.Tensor) and num_masked.numel() == 1 and not num_masked.is_floating_point():
        num_masked = num_masked.item()
    if isinstance(num_masked, bool) or not isinstance(num_masked, numbers.Integral):
        raise ValueError(f"num_masked must be an int, got {num_masked!r}")
    num_masked = int(num_masked)
    if not 0 <= num_masked <= n:
        raise ValueError(f"num_masked must be in [0, {n}] (the number of patches), got {num_masked}")
    return num_masked


def _rand(generator: torch.Generator | None) -> float:
    return torch.rand(1, generator=generator, dtype=torch.float64).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (both inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


class BoxMaskGenerator:
    """Block-wise masking as in BEiT / DINOv2 (``MaskingGenerator``), made exact.

    Rectangles are added one at a time: target area ``~ U(min_num_patches, min(remaining, max_num_patches))``,
    aspect ratio log-uniform in ``[min_aspect, max_aspect]``, random position, up to 10 tries per rectangle;
    a rectangle is accepted when it adds between 1 and ``min(remaining, max_num_patches)`` new patches.
    Unlike DINOv2 (whose mask can stop a few patches short once no rectangle fits the remainder), when no
    rectangle is accepted the remainder is **topped up one patch at a time** with random unmasked patches
    4-adjacent to the mask (any unmasked patch if none is adjacent, e.g. when the mask is still empty), so the
    mask has exactly ``num_masked`` patches. Rectangles may be as large as the grid (DINOv2 requires them to
    be strictly smaller, which would make tiny test grids unmaskable by rectangles).

    Args:
        grid_size: ``(gh, gw)`` patch grid (or an int for a square grid).
        min_num_patches: smallest target area of one rectangle.
        max_num_patches: largest number of new patches one rectangle may add (default ``0.5 * gh * gw``).
        min_aspect: smallest aspect ratio h/w; ``max_aspect`` defaults to ``1 / min_aspect``.
    """

    def __init__(
        self,
        grid_size,
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ):
        self.height, self.width = check_grid_size(grid_size)
        self.num_patches = self.height * self.width
        if min_num_patches < 1:
            raise ValueError(f"min_num_patches must be >= 1, got {min_num_patches}")
        self.min_num_patches = min_num_patches
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else max_num_patches
        if self.max_num_patches < 1:
            raise ValueError(f"max_num_patches must be >= 1, got {self.max_num_patches}")
        max_aspect = max_aspect or 1.0 / min_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.height, self.width

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid_size={self.grid_size}, min_num_patches={self.min_num_patches}, "
            f"max_num_patches={self.max_num_patches}, aspect=({math.exp(self.log_aspect[0]):.3g}, "
            f"{math.exp(self.log_aspect[1]):.3g}))"
        )

    def _add_rectangle(self, mask: torch.Tensor, max_new: int, generator) -> int:
        lo, hi = sorted((float(self.min_num_patches), float(max_new)))
        for _ in range(10):
            target_area = lo + (hi - lo) * _rand(generator)
            aspect = math.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * _rand(generator))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if 1 <= h <= self.height and 1 <= w <= self.width:
                top = _randint(0, self.height - h, generator)
                left = _randint(0, self.width - w, generator)
                region = mask[top : top + h, left : left + w]
                new = int((~region).sum().item())
                if 0 < new <= max_new:
                    region.fill_(True)
                    return new
        return 0

    def _top_up(self, mask: torch.Tensor, missing: int, generator) -> None:
        for _ in range(missing):
            neighbours = torch.zeros_like(mask)
            neighbours[1:, :] |= mask[:-1, :]
            neighbours[:-1, :] |= mask[1:, :]
            neighbours[:, 1:] |= mask[:, :-1]
            neighbours[:, :-1] |= mask[:, 1:]
            candidates = (neighbours & ~mask).flatten().nonzero().flatten()
            if candidates.numel() == 0:
                candidates = (~mask).flatten().nonzero().flatten()
            pick = candidates[_randint(0, candidates.numel() - 1, generator)]
            mask.view(-1)[pick] = True

    def __call__(self, num_masked: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A ``(gh, gw)`` bool mask with exactly ``num_masked`` masked patches."""
        num_masked = _check_count(num_masked, self.num_patches)
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masked:
            max_new = int(min(num_masked - count, self.max_num_patches))
            delta = self._add_rectangle(mask, max_new, generator) if max_new >= 1 else 0
            if delta == 0:
                break
            count += delta
        if count < num_masked:
            self._top_up(mask, num_masked - count, generator)
        return mask


class CrossMaskGenerator:
    """Cross-wise position masking (docs/method.md §3, shape parameters are our choice).

    A cross is a horizontal and a vertical 1-patch-thick bar through a random centre ``(r, c)`` (uniform over
    the grid), with arm half-lengths ``a_h ~ U{1..max(1, gw // 4)}`` (horizontal bar: row ``r``, columns
    ``c - a_h .. c + a_h``) and ``a_v ~ U{1..max(1, gh // 4)}`` (vertical bar: column ``c``, rows
    ``r - a_v .. r + a_v``), both clipped to the grid. Crosses are added until the target count is reached;
    if the last cross would overshoot, only its new patches closest to its centre are kept (distance along
    the bar, ties broken at random), so the count is exact and every masked patch lies on a bar of a placed
    cross. Crosses that add no new patch are not recorded. After ``50 * N + 100`` crosses (never reached in
    practice) centres are drawn among unmasked patches only, which guarantees termination.

    The crosses placed by the latest call are in ``last_crosses`` as ``(row, col, arm_h, arm_v)`` tuples;
    ``__call__(..., return_crosses=True)`` returns them too.
    """

    def __init__(self, grid_size):
        self.height, self.width = check_grid_size(grid_size)
        self.num_patches = self.height * self.width
        self.max_arm_h = max(1, self.width // 4)
        self.max_arm_v = max(1, self.height // 4)
        self.last_crosses: list[tuple[int, int, int, int]] = []

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.height, self.width

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid_size={self.grid_size}, max_arms=({self.max_arm_h}, {self.max_arm_v}))"

    def cross_cells(self, row: int, col: int, arm_h: int, arm_v: int) -> list[tuple[int, int]]:
        """Cells of one cross (centre first, then both bars), clipped to the grid."""
        cells = [(row, col)]
        cells += [(row, c) for c in range(max(0, col - arm_h), min(self.width, col + arm_h + 1)) if c != col]
        cells += [(r, col) for r in range(max(0, row - arm_v), min(self.height, row + arm_v + 1)) if r != row]
        return cells

    def __call__(self, num_masked: int, generator: torch.Generator | None = None, return_crosses: bool = False):
        """A ``(gh, gw)`` bool mask with exactly ``num_masked`` patches (and the crosses if asked)."""
        num_masked = _check_count(num_masked, self.num_patches)
        width = self.width
        flat = bytearray(self.num_patches)  # plain bytes: per-cell torch indexing is slow
        crosses: list[tuple[int, int, int, int]] = []
        count, tries = 0, 0
        while count < num_masked:
            tries += 1
            if tries > 50 * self.num_patches + 100:
                free = [i for i, v in enumerate(flat) if not v]
                row, col = divmod(free[_randint(0, len(free) - 1, generator)], width)
            else:
                row = _randint(0, self.height - 1, generator)
                col = _randint(0, width - 1, generator)
            arm_h = _randint(1, self.max_arm_h, generator)
            arm_v = _randint(1, self.max_arm_v, generator)
            new = [(r, c) for r, c in self.cross_cells(row, col, arm_h, arm_v) if not flat[r * width + c]]
            if not new:
                continue
            remaining = num_masked - count
            if len(new) > remaining:
                # Trim the overshoot: keep the new patches closest to the centre (random tie-break).
                order = torch.randperm(len(new), generator=generator).tolist()
                shuffled = [new[i] for i in order]
                shuffled.sort(key=lambda rc: abs(rc[0] - row) + abs(rc[1] - col))
                new = shuffled[:remaining]
            for r, c in new:
                flat[r * width + c] = 1
            count += len(new)
            crosses.append((row, col, arm_h, arm_v))
        mask = torch.tensor(list(flat), dtype=torch.bool).view(self.height, width)
        self.last_crosses = crosses
        if return_crosses:
            return mask, list(crosses)
        return mask
