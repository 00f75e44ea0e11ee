"""The spec: validation names the field, normalisation, the marker bytes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import toydata
from tests.support.toy import SMALL_MARKER
from toydata.spec import AdeSpec, CocoSpec, ImagesSpec, ToySpec


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=True), "seed"),
        (dict(images=ImagesSpec(num=0)), "images.num"),
        (dict(images=ImagesSpec(size=(8, 64))), "images.size"),
        (dict(images=ImagesSpec(scenes="faces")), "images.scenes"),
        (dict(coco=CocoSpec(num_train=-1)), "coco.num_train"),
        (dict(coco=CocoSpec(num_val=1.5)), "coco.num_val"),
        (dict(coco=CocoSpec(size="big")), "coco.size"),
        (dict(ade=AdeSpec(num_train=-2)), "ade.num_train"),
        (dict(ade=AdeSpec(num_val=None)), "ade.num_val"),
        (dict(ade=AdeSpec(size=16)), "ade.size"),
        (dict(ade=AdeSpec(num_classes=1)), "ade.num_classes"),
        (dict(ade=AdeSpec(num_classes=9)), "ade.num_classes"),  # the texture set has 8 patterns
    ],
)
def test_spec_validation_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{re.escape(field)} must "):
        ToySpec(**kwargs)


def test_spec_rejects_a_set_spec_of_the_wrong_kind():
    with pytest.raises(TypeError, match="^coco must be a CocoSpec"):
        ToySpec(coco=AdeSpec())


def test_spec_normalises_counts_and_sizes():
    spec = ToySpec(seed=np.int64(3), images=ImagesSpec(num=np.int64(5), size=64), ade=AdeSpec(size=[64, 96]))
    assert spec.seed == 3 and type(spec.seed) is int and type(spec.images.num) is int
    assert spec.images.size == (64, 64) and spec.ade.size == (64, 96)
    assert spec == ToySpec(seed=3, images=ImagesSpec(num=5, size=(64, 64)), ade=AdeSpec(size=(64, 96)))


def test_default_spec_marker_equals_the_marker_of_existing_default_sets():
    # what GENERATOR_VERSION 5 writes for the defaults (data/toy): ensure_toy_data compares json.load(marker) to this
    written = (
        '{"ade":{"num_classes":6,"num_train":24,"num_val":8,"size":[256,256]},'
        '"coco":{"num_train":24,"num_val":8,"size":[256,256]},'
        '"images":{"num":256,"scenes":"texture","size":[160,160]},"seed":0,"version":5}'
    )
    assert ToySpec().marker() == json.loads(written)


def test_ensure_toy_data_writes_the_documented_marker_bytes(toy_root):
    with open(toy_root["marker"], encoding="ascii", newline="") as f:
        assert f.read() == SMALL_MARKER


def test_ensure_toy_data_rejects_what_is_not_a_spec(tmp_path):
    with pytest.raises(TypeError, match="ToySpec"):
        toydata.ensure_toy_data(str(tmp_path / "toy"), 0)  # the former signature's seed
    assert not (tmp_path / "toy").exists()
