"""Box and cross masks: exact counts and shapes."""

import pytest
import torch

from pretrain.data.masking import BoxMaskGenerator, CrossMaskGenerator

BOX_GRIDS = pytest.mark.parametrize("grid", [(14, 14), (5, 7), (2, 2)])
CROSS_GRIDS = pytest.mark.parametrize("grid", [(14, 14), (6, 9), (2, 2), (1, 5)])


@BOX_GRIDS
def test_a_box_mask_has_the_grid_shape_and_exactly_the_asked_count(grid):
    gen = BoxMaskGenerator(grid)
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(0)
    for k in sorted(set(range(0, n + 1, max(1, n // 25))) | {1, n // 2, n}):
        mask = gen(k, g)
        assert mask.shape == grid and mask.dtype == torch.bool
        assert int(mask.sum()) == k


@BOX_GRIDS
def test_a_box_mask_is_a_function_of_the_generator_seed(grid):
    gen = BoxMaskGenerator(grid)
    n = grid[0] * grid[1]
    a = gen(n // 3, torch.Generator().manual_seed(9))
    b = gen(n // 3, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


@BOX_GRIDS
def test_a_box_mask_count_outside_0_to_n_is_refused(grid):
    gen = BoxMaskGenerator(grid)
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(0)
    for bad in (-1, n + 1):
        with pytest.raises(ValueError):
            gen(bad, g)


def test_box_mask_is_blockwise():
    """On a 14x14 grid, a 40% mask is mostly rectangles: few masked patches have no masked 4-neighbour."""
    gen = BoxMaskGenerator((14, 14))
    g = torch.Generator().manual_seed(2)
    isolated = 0
    for _ in range(20):
        m = gen(78, g)
        p = torch.nn.functional.pad(m.float()[None, None], (1, 1, 1, 1))[0, 0]
        nb = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
        isolated += int((m & (nb == 0)).sum())
    assert isolated <= 10


def _cross_masks(grid):
    """(k, mask, crosses, gen.last_crosses right after the call) for the tested counts k on ``grid``."""
    gen = CrossMaskGenerator(grid)
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(4)
    draws = []
    for k in sorted(set(range(0, n + 1, max(1, n // 20))) | {1, n}):
        mask, crosses = gen(k, g, return_crosses=True)
        draws.append((k, mask, crosses, gen.last_crosses))
    return draws


@CROSS_GRIDS
def test_a_cross_mask_has_the_grid_shape_and_exactly_the_asked_count(grid):
    for k, mask, _, _ in _cross_masks(grid):
        assert int(mask.sum()) == k and mask.shape == grid


@CROSS_GRIDS
def test_the_returned_crosses_are_the_last_crosses(grid):
    for _, _, crosses, last_crosses in _cross_masks(grid):
        assert crosses == last_crosses


@CROSS_GRIDS
def test_every_cross_is_centred_on_the_grid_with_arms_up_to_a_quarter_of_its_side(grid):
    gh, gw = grid
    for _, _, crosses, _ in _cross_masks(grid):
        for r, c, arm_h, arm_v in crosses:
            assert 0 <= r < gh and 0 <= c < gw
            assert 1 <= arm_h <= max(1, gw // 4) and 1 <= arm_v <= max(1, gh // 4)


@CROSS_GRIDS
def test_every_masked_patch_lies_on_a_bar_of_a_cross(grid):
    for _, mask, crosses, _ in _cross_masks(grid):
        on_bar = torch.zeros(grid, dtype=torch.bool)
        for r, c, arm_h, arm_v in crosses:
            on_bar[r, max(0, c - arm_h) : c + arm_h + 1] = True
            on_bar[max(0, r - arm_v) : r + arm_v + 1, c] = True
        assert not (mask & ~on_bar).any(), "a masked patch lies on no cross"


@CROSS_GRIDS
def test_a_one_patch_cross_mask_keeps_the_centre_of_its_cross(grid):
    """Trimming a cross down to the asked count keeps the centre first."""
    ((_, mask, crosses, _),) = [d for d in _cross_masks(grid) if d[0] == 1]
    assert mask[crosses[0][0], crosses[0][1]]


@CROSS_GRIDS
def test_a_cross_mask_count_outside_0_to_n_is_refused(grid):
    gen = CrossMaskGenerator(grid)
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(4)
    for bad in (-1, n + 1):
        with pytest.raises(ValueError):
            gen(bad, g)
