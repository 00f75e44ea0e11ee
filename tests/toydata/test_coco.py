"""The toy COCO set: loads in pycocotools, exact areas and boxes, visible and contrasting objects."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import toydata
from tests.support.toy import SMALL, read_image


def test_coco_set_loads_in_pycocotools_with_the_toy_categories(toy_root):
    from pycocotools.coco import COCO

    cat_names = {c["id"]: c["name"] for c in toydata.COCO_CATEGORIES}
    assert cat_names == {1: "disk", 2: "square", 3: "triangle", 4: "star", 5: "cross"}
    for split, num in (("train", SMALL.coco.num_train), ("val", SMALL.coco.num_val)):
        coco = COCO(toy_root[f"coco_{split}_json"])
        assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == cat_names
        assert len(coco.getImgIds()) == num
        anns = coco.loadAnns(coco.getAnnIds())
        assert len({a["id"] for a in anns}) == len(anns)
        assert len({a["category_id"] for a in anns}) >= 3, "objects of several categories expected"
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(os.path.join(toy_root[f"coco_{split}_images"], img["file_name"])) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
            assert len(coco.getAnnIds(imgIds=img["id"])) >= 2, "every image should hold at least two objects"


def test_coco_area_and_bbox_equal_what_pycocotools_decodes(toy_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    h, w = SMALL.coco.size
    for split in ("train", "val"):
        coco = COCO(toy_root[f"coco_{split}_json"])
        for ann in coco.loadAnns(coco.getAnnIds()):
            assert ann["iscrowd"] == 0
            seg = ann["segmentation"]
            assert isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6 and len(seg[0]) % 2 == 0
            rle = coco.annToRLE(ann)
            assert ann["area"] == float(mask_utils.area(rle)), ann["id"]  # tolerance 0 (module docstring)
            np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(rle), atol=1.0)
            x, y, bw, bh = ann["bbox"]
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h


def _coco_objects(root, json_file):
    """(visible mask, amodal mask, bbox, image) of every annotation of ``json_file``, in painting order."""
    from pycocotools.coco import COCO

    coco = COCO(json_file)
    for img in coco.loadImgs(coco.getImgIds()):
        pix = read_image(os.path.join(root, img["file_name"]), np.float64)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=img["id"])), key=lambda a: a["id"])
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for i, (ann, m) in enumerate(zip(anns, masks)):
            visible = m & ~np.any(masks[i + 1 :], axis=0) if i + 1 < len(masks) else m
            yield visible, m, np.any(masks, axis=0), ann["bbox"], pix


def test_coco_objects_keep_at_least_70_percent_of_their_pixels_visible(toy_root):
    objects = list(_coco_objects(toy_root["coco_val_images"], toy_root["coco_val_json"]))
    fractions = [visible.sum() / m.sum() for visible, m, *_ in objects]
    assert len(fractions) >= 8 and min(fractions) >= 1.0 - toydata.MAX_OCCLUSION - 1e-9


def test_coco_objects_contrast_with_their_surroundings(toy_root):
    dists = []
    for visible, _, union, bbox, pix in _coco_objects(toy_root["coco_val_images"], toy_root["coco_val_json"]):
        x, y, w, h = (int(v) for v in bbox)
        ring = np.zeros_like(union)
        ring[max(y - 6, 0) : y + h + 6, max(x - 6, 0) : x + w + 6] = True
        ring &= ~union
        if visible.sum() >= 20 and ring.sum() >= 20:
            dists.append(np.linalg.norm(pix[visible].mean(0) - pix[ring].mean(0)))
    dists = np.array(dists)
    assert len(dists) >= 8
    assert np.median(dists) > 40 and (dists > 15).mean() >= 0.8, dists


def test_make_toy_coco_refuses_to_replace_files_without_overwrite(tmp_path):
    out = str(tmp_path / "coco")
    toydata.make_toy_coco(out, num_train=1, num_val=1, image_size=64)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        toydata.make_toy_coco(out, num_train=1, num_val=1, image_size=64)
    toydata.make_toy_coco(out, num_train=2, num_val=1, image_size=64, overwrite=True)
    assert len(os.listdir(os.path.join(out, "train"))) == 2
