"""CR2PQ's relative coordinates (pretrain/data/relative_coords.py, docs/cr2pq.md) against hand values: view B's patches
in view A's frame for crops that overlap, contain one another or are disjoint, flips, and the centre anchor."""

from __future__ import annotations

import pytest
import torch

from pretrain.data.relative_coords import listing1_coords, relative_coords


def _box(top, left, h, w):
    """Listing 1's ``(top, left, height, width)`` as our ``(x0, y0, x1, y1)`` box, batch of one."""
    return torch.tensor([[left, top, left + w, top + h]], dtype=torch.float64)


def _coords(p_a, p_b, k_a, k_b, **kw):
    """B's coordinates flattened: ``[row_0, col_0, row_1, col_1, ...]``."""
    return relative_coords(_box(*p_a), _box(*p_b), (k_a, k_a), (k_b, k_b), **kw)[0].flatten().tolist()


def _flat(pairs) -> list[float]:
    return [float(v) for pair in pairs for v in pair]


# (A, B, K_A, K_B, B's coordinates by hand, row-major): one patch of A is h_A / K_A pixels
CASES = {
    # A 100 px / 4 = 25 px per unit; B starts 2 rows and 1 column in, its 50-px patches span 2 rows and 1 column
    "overlapping": ((0, 0, 100, 100), (50, 25, 100, 50), 4, 2, [[2, 1], [2, 2], [4, 1], [4, 2]]),
    # B inside A: B at (25, 50) px = (1, 2) units, 25-px patches = 1 unit
    "B inside A": ((0, 0, 100, 100), (25, 50, 50, 50), 4, 2, [[1, 2], [1, 3], [2, 2], [2, 3]]),
    # A inside B: A's unit is 10 px; B starts at -2 units and its 50-px patches are 5 units
    "A inside B": ((20, 20, 40, 40), (0, 0, 100, 100), 4, 2, [[-2, -2], [-2, 3], [3, -2], [3, 3]]),
    # disjoint: A's unit 20 px; B 3 rows down, 5 columns right; B's patches 10 x 20 px = 0.5 x 1 unit
    "disjoint": ((0, 0, 40, 40), (60, 100, 20, 40), 2, 2, [[3, 5], [3, 6], [3.5, 5], [3.5, 6]]),
}


@pytest.mark.parametrize("case", CASES)
def test_view_b_gets_the_hand_coordinates_in_view_a_frame(case):
    p_a, p_b, k_a, k_b, expected = CASES[case]
    assert _coords(p_a, p_b, k_a, k_b) == pytest.approx(_flat(expected))


@pytest.mark.parametrize("case", CASES)
def test_listing_1_with_its_bug_fixed_gives_the_same_coordinates(case):
    p_a, p_b, k_a, k_b, expected = CASES[case]
    assert listing1_coords(p_a, p_b, k_a, k_b).flatten().tolist() == pytest.approx(_flat(expected))


def test_listing_1_has_exactly_k_b_points_per_axis_where_a_float_arange_would_add_one():
    # arange(0.1, 0.1 + 3 * 0.1, 0.1) has 4 elements in floating point; the fixed listing keeps K_B = 3
    assert len(torch.arange(0.1, 0.1 + 3 * 0.1, 0.1, dtype=torch.float64)) == 4
    out = listing1_coords((0, 0, 30, 30), (1, 1, 3, 3), 3, 3)
    assert out.shape == (9, 2) and out[:3, 1].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_a_view_against_itself_is_the_integer_grid_of_a():
    assert _coords((10, 30, 64, 48), (10, 30, 64, 48), 4, 4) == _flat([r, c] for r in range(4) for c in range(4))


def test_coordinates_are_the_same_in_pixels_and_in_normalised_image_units():
    a, b = _box(0, 0, 100, 100), _box(50, 25, 100, 50)
    in_pixels = relative_coords(a, b, (4, 4), (2, 2))
    assert torch.allclose(relative_coords(a / 200, b / 200, (4, 4), (2, 2)), in_pixels)


def test_a_flipped_view_a_mirrors_the_columns_of_b():
    # A (0, 0, 100, 100) flipped: displayed column u = (100 - x) / 25; B's patch 0 covers x 50-75 -> u 1-2, patch 1
    # covers x 75-100 -> u 0-1; the corner rule takes the first corner in A's frame
    out = _coords((0, 0, 100, 100), (25, 50, 50, 50), 4, 2, flip_a=torch.tensor([True]))
    assert out == pytest.approx(_flat([[1, 1], [1, 0], [2, 1], [2, 0]]))


def test_a_flipped_view_b_lists_its_patches_right_to_left():
    # B flipped: displayed patch 0 is the right half of B's crop (x 75-100 -> u 3)
    out = _coords((0, 0, 100, 100), (25, 50, 50, 50), 4, 2, flip_b=torch.tensor([True]))
    assert out == pytest.approx(_flat([[1, 3], [1, 2], [2, 3], [2, 2]]))


def test_two_equally_flipped_identical_views_are_again_the_integer_grid():
    both = {"flip_a": torch.tensor([True]), "flip_b": torch.tensor([True])}
    for anchor in ("corner", "center"):
        out = _coords((0, 0, 60, 60), (0, 0, 60, 60), 3, 3, anchor=anchor, **both)
        assert out == pytest.approx(_flat([r, c] for r in range(3) for c in range(3)))


def test_the_centre_anchor_shifts_by_half_the_scale_minus_one():
    # overlapping case: rows scale 2 (centre = corner + 0.5), columns scale 1 (unchanged)
    out = _coords((0, 0, 100, 100), (50, 25, 100, 50), 4, 2, anchor="center")
    assert out == pytest.approx(_flat([[2.5, 1], [2.5, 2], [4.5, 1], [4.5, 2]]))


def test_rows_run_over_b_grid_rows_and_columns_over_its_columns_on_a_non_square_grid():
    out = relative_coords(_box(0, 0, 100, 100), _box(0, 0, 100, 100), (4, 4), (2, 3))[0]
    assert out[:, 0].tolist() == pytest.approx([0, 0, 0, 2, 2, 2])
    assert out[:, 1].tolist() == pytest.approx([0, 4 / 3, 8 / 3] * 2)


def test_an_unknown_anchor_is_refused():
    with pytest.raises(ValueError, match="anchor"):
        relative_coords(_box(0, 0, 1, 1), _box(0, 0, 1, 1), (2, 2), (2, 2), anchor="middle")
