"""Multi-crop: crop sizes, boxes, flips, scale ranges, and the blur frequencies."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data.multicrop import MultiCropAugmentation
from pretrain.engine.config import load_config
from tests.support.images import noise_image, ramp_image


def _seed_all(seed=0):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(scope="module")
def multicrop_outputs():
    """(image width, height, output) for 8 calls on each of a landscape, a portrait and a tiny image."""
    _seed_all()
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_global=2, n_local=4)
    outputs = []
    for seed, (w, h) in enumerate([(200, 160), (160, 200), (20, 15)]):
        img = noise_image(w, h, seed)
        outputs += [(w, h, aug(img)) for _ in range(8)]
    return outputs


SCALE_RANGES = (("global_boxes", (0.32, 1.0)), ("local_boxes", (0.05, 0.32)))


def test_multicrop_returns_the_configured_crops_boxes_and_flips(multicrop_outputs):
    for _, _, out in multicrop_outputs:
        assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 4
        assert all(c.shape == (3, 32, 32) and c.dtype == torch.float32 for c in out["global_crops"])
        assert all(c.shape == (3, 16, 16) for c in out["local_crops"])
        assert out["global_boxes"].shape == (2, 4) and out["local_boxes"].shape == (4, 4)
        assert out["global_flips"].dtype == torch.bool and out["local_flips"].shape == (4,)


def test_multicrop_boxes_are_non_empty_and_inside_the_image(multicrop_outputs):
    for _, _, out in multicrop_outputs:
        for key, _ in SCALE_RANGES:
            boxes = out[key]
            assert (boxes >= 0).all() and (boxes <= 1).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_multicrop_boxes_lie_on_the_pixel_grid_of_the_original_image(multicrop_outputs):
    for w, h, out in multicrop_outputs:
        for key, _ in SCALE_RANGES:
            px = out[key] * torch.tensor([w, h, w, h])
            assert torch.allclose(px, px.round(), atol=1e-3)


def test_multicrop_box_areas_lie_in_the_global_and_local_scale_ranges(multicrop_outputs):
    for w, h, out in multicrop_outputs:
        for key, (lo, hi) in SCALE_RANGES:
            boxes = out[key]
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            # integer rounding of the crop sides (+-0.5 px each) loosens the range on small images
            slack = 0.5 / min(w, h) * 2 / math.sqrt(lo) + 0.02
            assert (area >= lo * (1 - slack) - 1.5 / (w * h)).all(), (key, area)
            assert (area <= min(1.0, hi * (1 + slack))).all(), (key, area)


@pytest.mark.parametrize(
    "kwargs", [{"global_scale": (0.5, 0.2)}, {"n_global": 0}], ids=["inverted_scale_range", "no_global_crop"]
)
def test_an_invalid_multicrop_setting_is_refused(kwargs):
    with pytest.raises(ValueError):
        MultiCropAugmentation(**kwargs)


RAMP_WIDTH, RAMP_HEIGHT = 256, 160


@pytest.fixture(scope="module")
def ramp_crops():
    """(crop, box, flip, output size) of every crop of 10 calls on a horizontal ramp (value = column), unnormalised."""
    _seed_all()
    img = ramp_image(RAMP_WIDTH, RAMP_HEIGHT)
    aug = MultiCropAugmentation(
        global_size=32, local_size=16, n_global=2, n_local=4, mean=(0, 0, 0), std=(1, 1, 1), photometric=False
    )
    crops = []
    for _ in range(10):
        out = aug(img)
        for kind, size in (("global", 32), ("local", 16)):
            for crop, box, flip in zip(out[f"{kind}_crops"], out[f"{kind}_boxes"], out[f"{kind}_flips"]):
                crops.append((crop, box, flip, size))
    return crops


def test_a_crop_of_a_horizontal_ramp_is_constant_along_y(ramp_crops):
    for crop, _, _, _ in ramp_crops:
        values = crop[0] * 255.0  # ramp value = pixel column
        assert torch.allclose(values, values[:1].expand_as(values), atol=1.0)


def test_crop_borders_match_the_ramp_at_the_box_edges_swapped_when_flipped(ramp_crops):
    """The box is the cropped region and flipped crops are mirrored: the left/right border values of a crop
    match the ramp at x0 / x1 (x1 / x0 when flipped)."""
    for crop, box, flip, size in ramp_crops:
        values = crop[0] * 255.0
        left, right = values[:, 0].mean().item(), values[:, -1].mean().item()
        step = (box[2] - box[0]).item() * RAMP_WIDTH / size  # source pixels per output pixel
        x0_expected = box[0].item() * RAMP_WIDTH + 0.5 * step - 0.5  # ramp at the first output column centre
        x1_expected = box[2].item() * RAMP_WIDTH - 0.5 * step - 0.5
        tol = 0.25 * step + 1.0  # bicubic edge effects; measured worst case ~0.3 of this
        if bool(flip):
            left, right = right, left
        assert abs(left - x0_expected) <= tol, (box, flip, left, x0_expected)
        assert abs(right - x1_expected) <= tol, (box, flip, right, x1_expected)


def test_both_flipped_and_unflipped_crops_occur(ramp_crops):
    assert {bool(flip) for _, _, flip, _ in ramp_crops} == {True, False}


def _count_blurs(aug, n_images):
    counts = {k: 0 for k in aug.blurs}
    for kind, blur in aug.blurs.items():
        inner = blur.transforms[0]

        def counting(img, kind=kind, inner=inner):
            counts[kind] += 1
            return inner(img)

        blur.transforms[0] = counting
    img = Image.new("RGB", (40, 40), (120, 60, 30))
    for _ in range(n_images):
        aug(img)
    return counts


@pytest.mark.parametrize("probs", [(0.0, 0.9, 0.5), (1.0, 0.1, 0.5)], ids=["dinov2_code", "dinov2_paper"])
def test_blur_frequency_per_crop_kind_within_binomial_bounds(probs):
    torch.manual_seed(0)
    n, n_local = 400, 2
    aug = MultiCropAugmentation(global_size=16, local_size=16, n_global=2, n_local=n_local, blur_prob=probs)
    counts = _count_blurs(aug, n)
    for kind, p, trials in (("global1", probs[0], n), ("global2", probs[1], n), ("local", probs[2], n * n_local)):
        sd = math.sqrt(trials * p * (1 - p))
        assert abs(counts[kind] - trials * p) <= 4 * sd + 1e-9, (kind, counts[kind], trials * p)


def test_the_config_default_blur_is_what_dinov2_code_applies():
    cfg = load_config([], ["train.data=x"])
    assert list(cfg.crops.blur_prob) == [0.0, 0.9, 0.5]


def test_the_multicrop_default_blur_is_what_dinov2_code_applies():
    assert MultiCropAugmentation().blur_prob == (0.0, 0.9, 0.5)
