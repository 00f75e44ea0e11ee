"""The toy pretraining images and texture classes."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import toydata
from tests.support.toy import SMALL, read_image
from toydata.spec import ImagesSpec, ToySpec


def test_pretraining_images_are_textured_rgb_jpegs_of_the_spec_size(toy_root):
    names = sorted(os.listdir(toy_root["images"]))
    assert names == [f"img_{i:05d}.jpg" for i in range(SMALL.images.num)]
    for name in names:
        with Image.open(os.path.join(toy_root["images"], name)) as im:
            assert im.mode == "RGB" and im.size == SMALL.images.size[::-1]
            assert np.asarray(im).std() > 10


def test_marker_records_the_default_texture_scenes(toy_root):
    with open(toy_root["marker"], encoding="utf-8") as f:
        assert json.load(f)["images"]["scenes"] == "texture"


def test_pretraining_scenes_repeat_neither_probe_images_nor_the_other_kind(tmp_path):
    size = SMALL.ade.size
    tex = toydata.make_toy_images(str(tmp_path / "tex"), num_images=4, size=size, seed=0)
    obj = toydata.make_toy_images(str(tmp_path / "obj"), num_images=4, size=size, seed=0, scenes="objects")
    ade = toydata.make_toy_ade(str(tmp_path / "ade"), num_train=4, num_val=1, image_size=size, appearance="texture")
    ade_imgs = sorted(os.listdir(ade["train_images"]))
    for i in range(4):
        t, o = read_image(tex[i], np.float64), read_image(obj[i], np.float64)
        a = read_image(os.path.join(ade["train_images"], ade_imgs[i]), np.float64)
        assert np.abs(t - o).mean() > 10 and np.abs(t - a).mean() > 10


def test_unknown_scene_kind_is_rejected_by_maker_and_spec(tmp_path):
    with pytest.raises(ValueError, match="scenes"):
        toydata.make_toy_images(str(tmp_path / "x"), scenes="faces")
    with pytest.raises(ValueError, match=re.escape("images.scenes must be one of")):
        ToySpec(images=ImagesSpec(scenes="faces"))


def test_makers_reject_a_negative_seed_and_a_tiny_size(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        toydata.make_toy_images(str(tmp_path / "x"), seed=-1)
    with pytest.raises(ValueError, match="size"):
        toydata.make_toy_images(str(tmp_path / "x"), size=(8, 8))


def test_texture_classes_are_class_major_and_deterministic():
    x, y = toydata.toy_texture_classes(num_per_class=3, size=48, num_classes=4, seed=0)
    x2, _ = toydata.toy_texture_classes(num_per_class=3, size=48, num_classes=4, seed=0)
    xv, _ = toydata.toy_texture_classes(num_per_class=3, size=48, num_classes=4, seed=0, split="val")
    assert x.shape == (12, 48, 48, 3) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert np.array_equal(x, x2) and np.abs(x.astype(float) - xv).mean() > 10
