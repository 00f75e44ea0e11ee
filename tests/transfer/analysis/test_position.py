"""The position-prediction proxy."""

import math

import pytest
import torch

from tests.transfer.analysis.helpers import _pico
from transfer.analysis import position as pos
from transfer.analysis.backbones import (
    OursAdapter,
)

# position proxy


class _FakeAdapter:
    """Designed tokens: reference = one-hot of the patch index; a position-masked patch i outputs one-hot of
    ``mapping[i]``; patches 16px, grid from the image size."""

    supports_masks = True
    name = "fake"
    patch_size = 16

    def __init__(self, mapping):
        self.mapping = torch.tensor(mapping)

    def normalize(self, x):
        return x

    def grid(self, h, w):
        return h // 16, w // 16

    def forward_masked(self, x, content_mask=None, pos_mask=None):
        b = x.shape[0]
        n = self.mapping.numel()
        idx = torch.arange(n).expand(b, n)
        if pos_mask is not None:
            idx = torch.where(pos_mask, self.mapping.expand(b, n), idx)
        return torch.nn.functional.one_hot(idx, n).float()


# grid 2x3: 0=(0,0) 1=(0,1) 2=(0,2) 3=(1,0) 4=(1,1) 5=(1,2)
HAND_MAPPING = [0, 2, 3, 5, 4, 5]  # 0->0 exact; 1->2 one off; 2->3 (dist 2); 3->5 (dist 2)
HAND_POS_MASK = torch.tensor([[True, True, True, True, False, False]])


@pytest.fixture(scope="module")
def hand_match():
    fake = _FakeAdapter(HAND_MAPPING)
    x = torch.zeros(1, 3, 32, 48)
    pm = HAND_POS_MASK
    return pos.match_positions(fake.forward_masked(x, pos_mask=pm), fake.forward_masked(x), pm, (2, 3))


def test_match_positions_pairs_each_masked_patch_with_its_nearest_reference(hand_match):
    assert hand_match["target"].tolist() == [0, 1, 2, 3] and hand_match["pred"].tolist() == [0, 2, 3, 5]


def test_match_positions_measures_the_grid_distance_of_each_match(hand_match):
    assert hand_match["distance"].tolist() == [0, 1, 2, 2]


def test_match_positions_counts_exact_and_within_one_hits(hand_match):
    assert (hand_match["num"], hand_match["top1"], hand_match["within1_count"]) == (4, 1, 2)


@pytest.fixture
def hand_cells(monkeypatch):
    """``position_accuracy`` over a batch of 2 with the hand case's designed masks (no content masking)."""
    pm = HAND_POS_MASK
    monkeypatch.setattr(
        pos,
        "sample_masks",
        lambda b, n, c, p, generator=None: (torch.zeros(b, n, dtype=torch.bool), pm.expand(b, n).clone()),
    )
    images = torch.zeros(2, 3, 32, 48)
    return pos.position_accuracy(_FakeAdapter(HAND_MAPPING), images, [0.0], [0.5], progress=False)


def test_position_accuracy_gives_one_cell_per_ratio_pair(hand_cells):
    assert len(hand_cells) == 1


def test_position_accuracy_pools_the_hits_over_the_batch(hand_cells):
    c = hand_cells[0]
    assert c.num_predictions == 8 and c.top1 == pytest.approx(0.25) and c.within1 == pytest.approx(0.5)


def test_position_accuracy_reports_chance_as_one_over_the_number_of_patches(hand_cells):
    assert hand_cells[0].chance == pytest.approx(1 / 6)


@pytest.fixture(scope="module")
def identity_cells():
    """``position_accuracy`` of an identity mapping over content ratios 0, 1 x position ratios 0, 0.5."""
    images = torch.zeros(2, 3, 32, 48)
    return pos.position_accuracy(_FakeAdapter(list(range(6))), images, [0.0, 1.0], [0.0, 0.5], progress=False)


def _by_ratios(cells):
    return {(c.content_ratio, c.pos_ratio): c for c in cells}


def test_without_position_masking_there_is_nothing_to_predict_and_top1_is_nan(identity_cells):
    c = _by_ratios(identity_cells)[(0.0, 0.0)]
    assert c.num_predictions == 0 and math.isnan(c.top1)


def test_with_everything_content_masked_nothing_is_left_to_position_mask(identity_cells):
    assert _by_ratios(identity_cells)[(1.0, 0.5)].num_predictions == 0


def test_an_identity_mapping_finds_every_position_masked_patch(identity_cells):
    c = _by_ratios(identity_cells)[(0.0, 0.5)]
    assert c.num_predictions == 6 and c.top1 == 1.0


def test_the_mean_over_cells_skips_cells_with_nothing_to_predict(identity_cells):
    assert pos.mean_over_cells(identity_cells) == 1.0


@pytest.fixture(scope="module")
def sampled_masks():
    g = torch.Generator().manual_seed(0)
    return pos.sample_masks(4, 20, 0.25, 0.5, g)


def test_content_and_position_masks_never_overlap(sampled_masks):
    cm, pm = sampled_masks
    assert not (cm & pm).any()


def test_sample_masks_content_masks_its_ratio_and_position_masks_its_ratio_of_the_rest(sampled_masks):
    cm, pm = sampled_masks
    assert cm.sum(1).tolist() == [5] * 4 and pm.sum(1).tolist() == [8] * 4  # 0.5 * (20 - 5) = 7.5 -> 8


def test_sample_masks_rejects_a_ratio_above_1():
    with pytest.raises(ValueError):
        pos.sample_masks(1, 4, 1.5, 0.1)


@pytest.fixture(scope="module")
def real_model_and_noise():
    """A random tiny model with a tiny field (outputs content-dominated) and two noise images."""
    torch.manual_seed(0)
    ad = OursAdapter(_pico())
    return ad, torch.rand(2, 3, 64, 64)


def test_against_the_unmasked_reference_every_position_masked_patch_is_found_at_its_place(real_model_and_noise):
    ad, images = real_model_and_noise
    cells = pos.position_accuracy(ad, images, [0.0, 0.25], [0.5], progress=False)
    assert all(c.num_predictions > 0 and c.top1 == 1.0 for c in cells)


def test_against_the_position_only_reference_top1_is_a_fraction(real_model_and_noise):
    ad, images = real_model_and_noise
    cells = pos.position_accuracy(ad, images, [0.0], [0.5], progress=False, reference="position")
    assert 0.0 <= cells[0].top1 <= 1.0
