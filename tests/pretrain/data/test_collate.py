"""Collate: crop-major order, mask assignment and ratios, determinism, errors."""

import math

import pytest
import torch

from pretrain.data.collate import MaskingCollator, stratified_mask_counts
from pretrain.seeding import mix_seeds
from tests.support.images import PINNED_MIX, fake_samples

B = 5  # samples in the crop-order batch


@pytest.fixture
def collated():
    samples = fake_samples(B)
    return samples, MaskingCollator((2, 2))(samples)


def test_collated_batch_stacks_every_field_crop_major(collated):
    _, out = collated
    assert out["global_crops"].shape == (2 * B, 3, 8, 8) and out["local_crops"].shape == (3 * B, 3, 4, 4)
    assert out["global_boxes"].shape == (2 * B, 4) and out["local_boxes"].shape == (3 * B, 4)
    assert out["global_flips"].shape == (2 * B,) and out["global_flips"].dtype == torch.bool
    assert out["content_masks"].shape == (2 * B, 4) and out["pos_masks"].shape == (2 * B, 4)
    assert out["n_global"] == 2 and out["n_local"] == 3


def test_global_crop_c_of_sample_b_lands_at_row_c_times_batch_plus_b(collated):
    samples, out = collated
    for c in range(2):
        for b in range(B):
            assert torch.equal(out["global_crops"][c * B + b], samples[b]["global_crops"][c])
            assert torch.equal(out["global_boxes"][c * B + b], samples[b]["global_boxes"][c])
            assert bool(out["global_flips"][c * B + b]) == bool(samples[b]["global_flips"][c])


def test_local_crop_c_of_sample_b_lands_at_row_c_times_batch_plus_b(collated):
    samples, out = collated
    for c in range(3):
        for b in range(B):
            assert torch.equal(out["local_crops"][c * B + b], samples[b]["local_crops"][c])
            assert torch.equal(out["local_boxes"][c * B + b], samples[b]["local_boxes"][c])
            assert bool(out["local_flips"][c * B + b]) == bool(samples[b]["local_flips"][c])


MASK_GRID, MASK_BATCH, MASK_N = (8, 8), 7, 64
mask_settings = pytest.mark.parametrize(
    ("mask_probability", "content_fraction"),
    [(p, f) for f in (0.0, 0.5, 1.0) for p in (0.5, 1.0)],
)


def _masks_over_three_seeds(mask_probability, content_fraction):
    """(content_masks, pos_masks) of a 7-sample batch on an 8x8 grid, for sample seeds 0, 1, 2."""
    collator = MaskingCollator(MASK_GRID, mask_probability=mask_probability, content_fraction=content_fraction)
    outs = [collator(fake_samples(MASK_BATCH, seed0=seed0)) for seed0 in range(3)]
    return [(out["content_masks"], out["pos_masks"]) for out in outs]


@mask_settings
def test_no_crop_gets_both_a_content_and_a_position_mask(mask_probability, content_fraction):
    for cm, pm in _masks_over_three_seeds(mask_probability, content_fraction):
        assert not (cm.any(1) & pm.any(1)).any(), "a crop got both kinds of mask"


@mask_settings
def test_masked_crop_counts_follow_the_mask_probability_and_content_fraction(mask_probability, content_fraction):
    n_masked = round(2 * MASK_BATCH * mask_probability)
    n_content = round(n_masked * content_fraction)
    for cm, pm in _masks_over_three_seeds(mask_probability, content_fraction):
        assert int(cm.any(1).sum()) == n_content
        assert int(pm.any(1).sum()) == n_masked - n_content


@mask_settings
def test_every_mask_covers_between_10_and_50_percent_of_the_patches(mask_probability, content_fraction):
    for cm, pm in _masks_over_three_seeds(mask_probability, content_fraction):
        for masks in (cm, pm):
            counts = masks.sum(1)
            ratios = counts[counts > 0].double() / MASK_N
            assert ((ratios >= 0.1) & (ratios <= 0.5)).all()


@mask_settings
def test_the_i_th_smallest_mask_lies_in_the_i_th_ratio_stratum(mask_probability, content_fraction):
    """Stratification (DINOv2): the i-th smallest count lies in the i-th stratum of linspace(0.1, 0.5)."""
    N = MASK_N
    for cm, pm in _masks_over_three_seeds(mask_probability, content_fraction):
        for masks in (cm, pm):
            counts = masks.sum(1)
            m = int((counts > 0).sum())
            if m:
                probs = torch.linspace(0.1, 0.5, m + 1, dtype=torch.float64).tolist()
                lo_c, hi_c = math.ceil(0.1 * N), math.floor(0.5 * N)
                for i, k in enumerate(sorted(counts[counts > 0].tolist())):
                    assert min(hi_c, max(lo_c, int(N * probs[i]))) <= k <= min(hi_c, max(lo_c, int(N * probs[i + 1])))


def test_the_same_sample_seeds_give_the_same_masks():
    collator = MaskingCollator((6, 6))
    a = collator(fake_samples(6, seed0=1))
    b = collator(fake_samples(6, seed0=1))
    assert torch.equal(a["content_masks"], b["content_masks"]) and torch.equal(a["pos_masks"], b["pos_masks"])


def test_other_sample_seeds_give_other_masks():
    collator = MaskingCollator((6, 6))
    a = collator(fake_samples(6, seed0=1))
    c = collator(fake_samples(6, seed0=2))
    assert not (torch.equal(a["content_masks"], c["content_masks"]) and torch.equal(a["pos_masks"], c["pos_masks"]))


def test_mix_seeds_is_deterministic_and_depends_on_every_argument():
    assert mix_seeds(0, 0, 0) == mix_seeds(0, 0, 0) != mix_seeds(0, 0, 1)


def test_mix_seeds_maps_any_integers_into_0_to_2_pow_63():
    assert 0 <= mix_seeds(2**70, -5) < 2**63


def test_mix_seeds_gives_its_pinned_value_in_every_process():
    """The mix is pure arithmetic (no salted hash): identical in every process and Python run."""
    assert mix_seeds(1, 2, 3) == PINNED_MIX


@pytest.mark.parametrize(
    ("grid", "kwargs"),
    [((1, 1), {}), ((4, 4), {"content_shape": "circle"}), ((4, 4), {"mask_probability": 1.5})],
    ids=["no_count_within_ratio_range_of_one_patch", "unknown_content_shape", "mask_probability_above_1"],
)
def test_an_impossible_collator_setting_is_refused(grid, kwargs):
    with pytest.raises(ValueError):
        MaskingCollator(grid, **kwargs)


def test_a_sample_without_a_seed_is_refused_naming_the_seed():
    samples = fake_samples(2)
    del samples[1]["seed"]
    with pytest.raises(ValueError, match="seed"):
        MaskingCollator((2, 2))(samples)


@pytest.mark.parametrize("seed", range(5))
def test_stratified_mask_counts_draw_one_count_per_stratum(seed):
    counts = stratified_mask_counts(4, 100, (0.1, 0.5), torch.Generator().manual_seed(seed))
    for i, c in enumerate(sorted(counts)):  # one count per stratum [10, 20], [20, 30], [30, 40], [40, 50]
        assert 10 * (i + 1) - 1 <= c <= 10 * (i + 2)
