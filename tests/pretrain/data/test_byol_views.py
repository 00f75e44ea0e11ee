"""BYOL's two views with boxes for CR2PQ (pretrain/data/byol_views.py): BYOL's asymmetric probabilities, the recorded
boxes are the crops taken, and samples are a pure function of seed, pass and index."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms

from pretrain.data.byol_views import BYOLTwoViews, blur_kernel_size
from pretrain.data.dataset import SSLDataset
from pretrain.data.folder import ImageFolderDataset
from pretrain.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from pretrain.data.position_aug import PositionScaleAugmentation


def _probabilities(views: BYOLTwoViews, view: int) -> dict[str, float]:
    out = {}
    for t in views.views[view].transforms:
        if isinstance(t, transforms.RandomApply):
            out[type(t.transforms[0]).__name__] = t.p
        elif isinstance(t, (transforms.RandomGrayscale, transforms.RandomSolarize)):
            out[type(t).__name__] = t.p
    return out


def test_the_photometric_recipe_is_byol_asymmetric_between_the_views():
    views = BYOLTwoViews(size=224)
    a, b = _probabilities(views, 0), _probabilities(views, 1)
    assert a == {"ColorJitter": 0.8, "RandomGrayscale": 0.2, "GaussianBlur": 1.0, "RandomSolarize": 0.0}
    assert b == {"ColorJitter": 0.8, "RandomGrayscale": 0.2, "GaussianBlur": 0.1, "RandomSolarize": 0.2}


def test_the_blur_kernel_is_byol_23_pixels_at_224_and_a_tenth_of_the_side_elsewhere():
    assert blur_kernel_size(224) == 23 and blur_kernel_size(96) == 11 and blur_kernel_size(32) == 5


def test_the_recorded_boxes_are_the_crops_taken():
    # a horizontal ramp: pixel value = column; without photometric changes the view's mean column gives its box
    ramp = torch.arange(200, dtype=torch.uint8).repeat(100, 1)
    img = Image.fromarray(torch.stack([ramp] * 3, -1).numpy())
    views = BYOLTwoViews(size=32, scale=(0.2, 0.5), flip_prob=0.0, photometric=False)
    out = views(img)
    for crop, box in zip(out["global_crops"], out["global_boxes"]):
        pixels = crop[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to [0, 1]
        mid_column = (box[0] + box[2]) / 2 * 200
        assert pixels.mean().item() * 255 == pytest.approx(mid_column.item(), abs=1.5)
    assert out["global_boxes"].shape == (2, 4) and out["global_flips"].tolist() == [False, False]


def test_a_flip_reverses_the_view_and_is_recorded():
    ramp = torch.arange(200, dtype=torch.uint8).repeat(100, 1)
    img = Image.fromarray(torch.stack([ramp] * 3, -1).numpy())
    out = BYOLTwoViews(size=32, flip_prob=1.0, photometric=False)(img)
    assert out["global_flips"].tolist() == [True, True]
    assert all(crop[0, :, 0].mean() > crop[0, :, -1].mean() for crop in out["global_crops"])


def test_samples_through_ssldataset_depend_only_on_seed_pass_and_index(toy_images):
    views = BYOLTwoViews(size=32)
    ds = SSLDataset(ImageFolderDataset(toy_images), views, PositionScaleAugmentation("none"), seed=5)
    first, again = ds[3], ds[3]
    assert all(torch.equal(x, y) for x, y in zip(first["global_crops"], again["global_crops"]))
    assert torch.equal(first["global_boxes"], again["global_boxes"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["global_boxes"], first["global_boxes"])


def test_probabilities_outside_0_1_are_refused():
    with pytest.raises(ValueError, match="blur_prob"):
        BYOLTwoViews(blur_prob=(1.5, 0.1))
