"""The toy ADE20K sets: known classes, colour against texture, loading in MMSeg."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import toydata
from tests.support.toy import SMALL, read_image


@pytest.mark.parametrize("which", ["ade", "ade_texture"])
def test_ade_label_maps_hold_two_or_more_known_classes(toy_root, which):
    k = SMALL.ade.num_classes
    for sub, num in (("training", SMALL.ade.num_train), ("validation", SMALL.ade.num_val)):
        img_dir = os.path.join(toy_root[which], "images", sub)
        ann_dir = os.path.join(toy_root[which], "annotations", sub)
        imgs, anns = sorted(os.listdir(img_dir)), sorted(os.listdir(ann_dir))
        assert len(imgs) == num and [os.path.splitext(n)[0] for n in imgs] == [os.path.splitext(n)[0] for n in anns]
        assert all(n.endswith(".jpg") for n in imgs) and all(n.endswith(".png") for n in anns)
        for name in anns:
            with Image.open(os.path.join(ann_dir, name)) as im:
                assert im.mode == "L" and im.size == SMALL.ade.size[::-1]
                labels = set(np.unique(np.asarray(im)).tolist())
            assert labels <= set(range(k + 1))
            assert len(labels - {0}) >= 2, f"{name}: expected at least two classes, got {labels}"


def _region_colour_accuracy(root, min_pixels=64):
    """Nearest-centroid accuracy of predicting a labelled region's class from its mean RGB (train -> val)."""

    def regions(sub):
        out = []
        img_dir, ann_dir = os.path.join(root, "images", sub), os.path.join(root, "annotations", sub)
        for name in sorted(os.listdir(img_dir)):
            img = read_image(os.path.join(img_dir, name), np.float64)
            lab = read_image(os.path.join(ann_dir, name[:-4] + ".png"))
            out += [(c, img[lab == c].mean(0)) for c in np.unique(lab) if c > 0 and (lab == c).sum() >= min_pixels]
        return out

    train, val = regions("training"), regions("validation")
    classes = sorted({c for c, _ in train})
    centroids = np.stack([np.mean([m for c2, m in train if c2 == c], axis=0) for c in classes])
    pred = [classes[int(np.argmin(((centroids - m) ** 2).sum(1)))] for _, m in val]
    return float(np.mean([p == c for p, (c, _) in zip(pred, val)])), len(val)


ADE_PROBE_KW = dict(num_train=16, num_val=12, image_size=(96, 96), seed=0, num_classes=6)


def test_ade_colour_set_gives_the_class_away_by_mean_colour(tmp_path):
    acc, n = _region_colour_accuracy(toydata.make_toy_ade(str(tmp_path / "c"), **ADE_PROBE_KW)["root"])
    assert n >= 20 and acc >= 0.8, (acc, n)


def test_ade_texture_set_hides_the_class_from_mean_colour(tmp_path):
    # 6 classes: chance 1/6
    root = toydata.make_toy_ade(str(tmp_path / "t"), appearance="texture", **ADE_PROBE_KW)["root"]
    acc, n = _region_colour_accuracy(root)
    assert n >= 20 and acc <= 0.4, (acc, n)


def test_make_toy_ade_rejects_an_unknown_appearance_before_writing(tmp_path):
    with pytest.raises(ValueError, match="appearance"):
        toydata.make_toy_ade(str(tmp_path / "x"), appearance="shape", **ADE_PROBE_KW)
    assert not (tmp_path / "x").exists()


# MMSeg 1.2.2's own _base_/datasets/ade20k.py config passes reduce_zero_label=True to LoadAnnotations (it warns)
@pytest.mark.filterwarnings("ignore:`reduce_zero_label` will be deprecated")
def test_ade_set_loads_in_mmseg_with_and_without_the_toy_metainfo(toy_root):
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules

    register_all_modules()
    k = SMALL.ade.num_classes
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", reduce_zero_label=True),
        dict(type="PackSegInputs"),
    ]
    prefix = dict(img_path="images/validation", seg_map_path="annotations/validation")
    for metainfo in (None, toydata.toy_ade_metainfo(k)):
        kw = {} if metainfo is None else {"metainfo": metainfo}
        ds = ADE20KDataset(data_root=toy_root["ade"], data_prefix=prefix, pipeline=pipeline, **kw)
        assert len(ds) == SMALL.ade.num_val
        if metainfo is not None:  # names spelled as in MMSeg: identity label map on 0..K-1, the rest ignored
            assert tuple(ds.metainfo["classes"]) == metainfo["classes"]
            assert all(ds.label_map[i] == (i if i < k else 255) for i in range(150))
        for i in range(len(ds)):
            sample = ds[i]
            gt = sample["data_samples"].gt_sem_seg.data.numpy()[0]
            assert tuple(sample["inputs"].shape) == (3, *SMALL.ade.size)
            assert gt.shape == tuple(SMALL.ade.size)
            assert set(np.unique(gt).tolist()) <= set(range(k)) | {255}
            raw = read_image(sample["data_samples"].seg_map_path, np.int64)
            np.testing.assert_array_equal(gt, np.where(raw == 0, 255, raw - 1))
