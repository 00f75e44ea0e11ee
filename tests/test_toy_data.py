"""Tests of the deterministic toy-data generator (pretrain/data/toy.py, tools/make_toy_data.py).

Area tolerance: zero. The generator rasterises each polygon with a numpy port of pycocotools' own ``rleFrPoly``
and paints exactly that mask, so ``area`` and ``bbox`` must equal what pycocotools decodes, pixel for pixel.
(A generic point-in-polygon rasteriser would differ from pycocotools by a few boundary pixels, ~1 % of the area
of these objects; the port removes that discrepancy, and the tests pin it down.)
"""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from pretrain.data import toy

SMALL = dict(
    num_images=6,
    image_size=(96, 96),
    coco_train=8,
    coco_val=4,
    coco_size=(160, 160),
    ade_train=6,
    ade_val=4,
    ade_size=(128, 128),
    ade_classes=6,
)


def _digests(root):
    """sha256 of every file under ``root``, keyed by relative path."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _read(path, dtype=None):
    """An image file as a numpy array (closed after reading)."""
    with Image.open(path) as im:
        return np.asarray(im, dtype=dtype)


def _mtimes(root):
    return {
        os.path.relpath(os.path.join(d, n), root): os.stat(os.path.join(d, n)).st_mtime_ns
        for d, _, files in os.walk(root)
        for n in files
    }


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "data"
    paths = toy.ensure_toy_data(str(root), seed=0, **SMALL)
    return paths


# ------------------------------------------------------------------------------------------------------------------
# COCO
# ------------------------------------------------------------------------------------------------------------------
def test_polygon_mask_matches_pycocotools_exactly():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(123)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(8, 70, size=2))
        k = int(rng.integers(3, 12))
        poly = np.round(rng.uniform(-8.0, max(h, w) + 8.0, size=2 * k), 2)  # includes vertices outside the image
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly.tolist()], h, w))).astype(bool)
        np.testing.assert_array_equal(toy.polygon_mask(poly, h, w), ref)


def test_coco_loads_and_annotations_match_pycocotools(toy_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    cat_names = {c["id"]: c["name"] for c in toy.COCO_CATEGORIES}
    for split, num in (("train", SMALL["coco_train"]), ("val", SMALL["coco_val"])):
        coco = COCO(toy_root[f"coco_{split}_json"])
        assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == cat_names
        assert min(cat_names) == 1
        assert len(coco.getImgIds()) == num
        anns = coco.loadAnns(coco.getAnnIds())
        assert len({a["id"] for a in anns}) == len(anns)
        assert len({a["category_id"] for a in anns}) >= 3, "objects of several categories expected"
        for img in coco.loadImgs(coco.getImgIds()):
            path = os.path.join(toy_root[f"coco_{split}_images"], img["file_name"])
            with Image.open(path) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
            assert len(coco.getAnnIds(imgIds=img["id"])) >= 2, "every image should hold at least two objects"
        for ann in anns:
            assert ann["iscrowd"] == 0 and ann["category_id"] in cat_names
            seg = ann["segmentation"]
            assert isinstance(seg, list) and all(len(p) >= 6 and len(p) % 2 == 0 for p in seg)
            rle = coco.annToRLE(ann)
            # tolerance 0: the generator uses pycocotools' rasterisation rule (see module docstring)
            assert ann["area"] == float(mask_utils.area(rle)), ann["id"]
            np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(rle), atol=1.0)
            x, y, bw, bh = ann["bbox"]
            assert x >= 0 and y >= 0 and x + bw <= 160 and y + bh <= 160


def test_coco_objects_are_visible(toy_root):
    """The painted objects stand out from their surroundings (occluded parts excluded)."""
    from pycocotools.coco import COCO

    coco = COCO(toy_root["coco_val_json"])
    dists, visible_fracs = [], []
    for img in coco.loadImgs(coco.getImgIds()):
        pix = _read(os.path.join(toy_root["coco_val_images"], img["file_name"]), np.float64)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=img["id"])), key=lambda a: a["id"])  # painting order
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        union = np.any(masks, axis=0)
        for i, (ann, m) in enumerate(zip(anns, masks)):
            visible = m & ~np.any(masks[i + 1 :], axis=0) if i + 1 < len(masks) else m
            visible_fracs.append(visible.sum() / m.sum())
            x, y, w, h = (int(v) for v in ann["bbox"])
            ring = np.zeros_like(m)
            ring[max(y - 6, 0) : y + h + 6, max(x - 6, 0) : x + w + 6] = True
            ring &= ~union
            if visible.sum() < 20 or ring.sum() < 20:
                continue
            dists.append(np.linalg.norm(pix[visible].mean(0) - pix[ring].mean(0)))
    assert min(visible_fracs) >= 1.0 - toy.MAX_OCCLUSION - 1e-9
    dists = np.array(dists)
    assert len(dists) >= 8
    assert np.median(dists) > 40 and (dists > 15).mean() >= 0.8, dists


# ------------------------------------------------------------------------------------------------------------------
# ADE
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["ade", "ade_texture"])
def test_ade_label_maps(toy_root, which):
    k = SMALL["ade_classes"]
    for sub, num in (("training", SMALL["ade_train"]), ("validation", SMALL["ade_val"])):
        img_dir = os.path.join(toy_root[which], "images", sub)
        ann_dir = os.path.join(toy_root[which], "annotations", sub)
        imgs, anns = sorted(os.listdir(img_dir)), sorted(os.listdir(ann_dir))
        assert len(imgs) == num and [os.path.splitext(n)[0] for n in imgs] == [os.path.splitext(n)[0] for n in anns]
        assert all(n.endswith(".jpg") for n in imgs) and all(n.endswith(".png") for n in anns)
        for name in anns:
            with Image.open(os.path.join(ann_dir, name)) as im:
                assert im.mode == "L" and im.size == SMALL["ade_size"][::-1]
                lab = np.asarray(im)
            labels = set(np.unique(lab).tolist())
            assert labels <= set(range(k + 1))
            assert len(labels - {0}) >= 2, f"{name}: expected at least two classes, got {labels}"


def _region_colour_accuracy(root, min_pixels=64):
    """Nearest-centroid accuracy of predicting a labelled region's class from its mean RGB (train -> val)."""

    def regions(sub):
        out = []
        img_dir, ann_dir = os.path.join(root, "images", sub), os.path.join(root, "annotations", sub)
        for name in sorted(os.listdir(img_dir)):
            img = _read(os.path.join(img_dir, name), np.float64)
            lab = _read(os.path.join(ann_dir, name[:-4] + ".png"))
            out += [(c, img[lab == c].mean(0)) for c in np.unique(lab) if c > 0 and (lab == c).sum() >= min_pixels]
        return out

    train, val = regions("training"), regions("validation")
    classes = sorted({c for c, _ in train})
    centroids = np.stack([np.mean([m for c2, m in train if c2 == c], axis=0) for c in classes])
    pred = [classes[int(np.argmin(((centroids - m) ** 2).sum(1)))] for _, m in val]
    return float(np.mean([p == c for p, (c, _) in zip(pred, val)])), len(val)


def test_ade_texture_set_hides_the_class_from_colour(tmp_path):
    # the colour set's classes are read off their mean colour; the texture set's are not (6 classes: chance 1/6)
    kw = dict(num_train=16, num_val=12, image_size=(96, 96), seed=0, num_classes=6)
    acc_colour, n1 = _region_colour_accuracy(toy.make_toy_ade(str(tmp_path / "c"), **kw)["root"])
    acc_texture, n2 = _region_colour_accuracy(toy.make_toy_ade(str(tmp_path / "t"), appearance="texture", **kw)["root"])
    assert n1 >= 20 and n2 >= 20
    assert acc_colour >= 0.8, acc_colour
    assert acc_texture <= 0.4, acc_texture
    with pytest.raises(ValueError, match="appearance"):
        toy.make_toy_ade(str(tmp_path / "x"), appearance="shape", **kw)


# MMSeg 1.2.2's own configs/_base_/datasets/ade20k.py passes reduce_zero_label=True to LoadAnnotations (it warns)
@pytest.mark.filterwarnings("ignore:`reduce_zero_label` will be deprecated")
def test_ade_loads_in_mmseg(toy_root):
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules

    register_all_modules()
    k = SMALL["ade_classes"]
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", reduce_zero_label=True),
        dict(type="PackSegInputs"),
    ]
    prefix = dict(img_path="images/validation", seg_map_path="annotations/validation")
    for metainfo in (None, toy.toy_ade_metainfo(k)):
        kw = {} if metainfo is None else {"metainfo": metainfo}
        ds = ADE20KDataset(data_root=toy_root["ade"], data_prefix=prefix, pipeline=pipeline, **kw)
        assert len(ds) == SMALL["ade_val"]
        if metainfo is not None:  # names spelled as in MMSeg: identity label map on 0..K-1, the rest ignored
            assert tuple(ds.metainfo["classes"]) == metainfo["classes"]
            assert all(ds.label_map[i] == (i if i < k else 255) for i in range(150))
        for i in range(len(ds)):
            sample = ds[i]
            gt = sample["data_samples"].gt_sem_seg.data.numpy()[0]
            assert tuple(sample["inputs"].shape) == (3, *SMALL["ade_size"])
            assert gt.shape == tuple(SMALL["ade_size"])
            assert set(np.unique(gt).tolist()) <= set(range(k)) | {255}
            raw = _read(sample["data_samples"].seg_map_path, np.int64)
            np.testing.assert_array_equal(gt, np.where(raw == 0, 255, raw - 1))


# ------------------------------------------------------------------------------------------------------------------
# pretraining images, determinism, idempotency, CLI
# ------------------------------------------------------------------------------------------------------------------
def test_pretraining_images(toy_root):
    names = sorted(os.listdir(toy_root["images"]))
    assert names == [f"img_{i:05d}.jpg" for i in range(SMALL["num_images"])]
    for name in names:
        with Image.open(os.path.join(toy_root["images"], name)) as im:
            assert im.mode == "RGB" and im.size == SMALL["image_size"][::-1]
            assert np.asarray(im).std() > 10


def test_pretraining_scene_kinds(tmp_path, toy_root):
    with open(toy_root["marker"], encoding="utf-8") as f:
        assert json.load(f)["images"]["scenes"] == "texture"  # the default, recorded in the marker
    size = SMALL["ade_size"]
    tex = toy.make_toy_images(str(tmp_path / "tex"), num_images=4, size=size, seed=0)
    obj = toy.make_toy_images(str(tmp_path / "obj"), num_images=4, size=size, seed=0, scenes="objects")
    ade = toy.make_toy_ade(str(tmp_path / "ade"), num_train=4, num_val=1, image_size=size, appearance="texture")
    ade_imgs = sorted(os.listdir(ade["train_images"]))
    for i in range(4):
        t, o = _read(tex[i], np.float64), _read(obj[i], np.float64)
        a = _read(os.path.join(ade["train_images"], ade_imgs[i]), np.float64)
        # own random streams: no pretraining scene repeats a probe image or the other kind's scene
        assert np.abs(t - o).mean() > 10 and np.abs(t - a).mean() > 10
    with pytest.raises(ValueError, match="scenes"):
        toy.make_toy_images(str(tmp_path / "x"), scenes="faces")
    with pytest.raises(ValueError, match="image_scenes"):
        toy.ensure_toy_data(str(tmp_path / "y"), seed=0, **dict(SMALL, image_scenes="faces"))


def test_same_seed_same_bytes_other_seed_differs(tmp_path, toy_root):
    a = toy.make_toy_all(str(tmp_path / "a"), seed=0, **SMALL)
    b = toy.make_toy_all(str(tmp_path / "b"), seed=0, **SMALL)
    c = toy.make_toy_all(str(tmp_path / "c"), seed=1, **SMALL)
    da, db, dc = _digests(a["root"]), _digests(b["root"]), _digests(c["root"])
    n_files = (
        SMALL["num_images"] + SMALL["coco_train"] + SMALL["coco_val"] + 2 + 4 * (SMALL["ade_train"] + SMALL["ade_val"])
    )
    assert da == db and len(da) == n_files
    # the atomic ensure_toy_data path writes the same bytes (plus its marker)
    dr = _digests(toy_root["root"])
    assert dr.pop(".complete") and dr == da
    assert da.keys() == dc.keys()
    differing = [k for k in da if da[k] != dc[k]]
    assert len(differing) == len(da), f"unchanged across seeds: {sorted(set(da) - set(differing))}"


def test_ensure_toy_data_idempotent_and_regenerates(tmp_path):
    root = str(tmp_path / "toy")
    params = dict(SMALL, num_images=2, coco_train=2, coco_val=1, ade_train=2, ade_val=1)
    paths = toy.ensure_toy_data(root, seed=0, **params)
    assert os.path.isfile(paths["marker"])
    before, digests = _mtimes(root), _digests(root)
    assert toy.ensure_toy_data(root, seed=0, **params) == paths
    assert _mtimes(root) == before, "second call must not rewrite anything"
    # other parameters: regenerated in place, atomically, with no temporary folders left behind
    toy.ensure_toy_data(root, seed=1, **params)
    assert _digests(root) != digests
    with open(paths["marker"], encoding="utf-8") as f:
        assert json.load(f)["seed"] == 1
    toy.ensure_toy_data(root, seed=1, **dict(params, coco_val=2))
    assert len(os.listdir(paths["coco_val_images"])) == 2
    assert sorted(os.listdir(tmp_path)) == ["toy"]
    # force regenerates identical bytes
    digests = _digests(root)
    toy.ensure_toy_data(root, seed=1, force=True, **dict(params, coco_val=2))
    assert _digests(root) == digests


def test_refuses_to_clobber(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing"):
        toy.ensure_toy_data(str(foreign), seed=0, **SMALL)
    assert (foreign / "keep.txt").read_text() == "precious"
    out = str(tmp_path / "coco")
    toy.make_toy_coco(out, num_train=1, num_val=1, image_size=64)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        toy.make_toy_coco(out, num_train=1, num_val=1, image_size=64)
    toy.make_toy_coco(out, num_train=2, num_val=1, image_size=64, overwrite=True)
    assert len(os.listdir(os.path.join(out, "train"))) == 2
    with pytest.raises(ValueError, match="seed"):
        toy.make_toy_images(str(tmp_path / "x"), seed=-1)
    with pytest.raises(ValueError, match="size"):
        toy.make_toy_images(str(tmp_path / "x"), size=(8, 8))


def test_cli(tmp_path, capsys, repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_toy_data", os.path.join(repo_root, "tools", "make_toy_data.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = str(tmp_path / "ade")
    assert cli.main(["--out", out, "--what", "ade", "--num-train", "2", "--num-val", "1", "--size", "64x96"]) == 0
    assert "train_images" in capsys.readouterr().out
    with Image.open(os.path.join(out, "images", "training", "ADE_train_00000000.jpg")) as im:
        assert im.size == (96, 64)
    with pytest.raises(SystemExit):
        cli.main(["--out", out, "--what", "ade", "--num-train", "2", "--num-val", "1", "--size", "64x96"])
    assert "overwrite" in capsys.readouterr().err
