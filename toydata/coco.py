"""The toy COCO instance-segmentation set (:func:`make_toy_coco`).

Annotation scheme
    * Every object is described by one polygon (its complete outline, float coordinates rounded to 2 decimals);
      polygons are what detectron2's default ``mask_format="polygon"`` needs.
    * Objects are painted in annotation order, so later objects occlude earlier ones. The masks are **amodal**
      (the full shape, including occluded pixels); to keep that sensible, no earlier object is left with less
      than ``1 - MAX_OCCLUSION`` (70 %) of its pixels visible (:func:`toydata.scenes.object_scene`).
    * The object's mask is the polygon rasterised by pycocotools (:func:`toydata.scenes.polygon_mask`). The image
      is painted with exactly this mask, ``area`` is its pixel count and ``bbox`` its tight extent
      ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]``, so pycocotools' ``area(annToRLE(ann))`` and ``toBbox`` reproduce
      ``area`` and ``bbox`` exactly.
    * Objects lie entirely inside the image.
"""

from __future__ import annotations

import os

from toydata._checks import check_count, check_seed, check_size
from toydata._files import json_dump, prepare_dir, save_rgb_jpeg
from toydata.scenes import SHAPES, object_scene, stream_rng
from toydata.spec import GENERATOR_VERSION

#: COCO categories of the toy instance set: one per shape of :data:`toydata.scenes.SHAPES`, ids from 1 as in COCO.
COCO_CATEGORIES = tuple({"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES))
_CATEGORY_IDS = {c["name"]: c["id"] for c in COCO_CATEGORIES}
# Part of the annotation files' bytes: changing it means bumping GENERATOR_VERSION.
_DESCRIPTION = "ssl-vit-toolkit toy COCO instance set (amodal polygons, see the toydata package)"


def _annotation(obj: dict, ann_id: int, image_id: int) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": _CATEGORY_IDS[obj["shape"]],
        "segmentation": [[float(v) for v in obj["polygon"].reshape(-1)]],
        "area": float(obj["area"]),
        "bbox": [float(v) for v in obj["bbox"]],
        "iscrowd": 0,
    }


def _coco_split(img_dir: str, split: str, num: int, h: int, w: int, seed: int) -> dict:
    """Write the images of one split into ``img_dir`` and return its COCO dict."""
    images, annotations = [], []
    for i in range(num):
        img, objects = object_scene(stream_rng(seed, "coco", split, i), h, w)
        image_id = i + 1
        file_name = f"{image_id:012d}.jpg"
        save_rgb_jpeg(img, os.path.join(img_dir, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        annotations += [_annotation(obj, len(annotations) + j + 1, image_id) for j, obj in enumerate(objects)]
    return {
        "info": {"description": _DESCRIPTION, "version": str(GENERATOR_VERSION), "seed": seed, "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in COCO_CATEGORIES],
    }


def make_toy_coco(
    out_dir: str,
    num_train: int = 24,
    num_val: int = 8,
    image_size: int | tuple[int, int] = (256, 256),
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write a COCO-format instance-segmentation set.

    Files: ``out_dir/{train,val}/<012d id>.jpg`` and ``out_dir/annotations/instances_{train,val}.json``;
    categories :data:`COCO_CATEGORIES`; one polygon per annotation (amodal, see the module docstring),
    ``area`` = pixel count of the polygon's mask, ``bbox`` = its tight extent, ``iscrowd`` = 0.

    Returns a dict of paths: ``root``, ``train_images``, ``val_images``, ``train_json``, ``val_json``.
    """
    seed = check_seed(seed)
    num_train = check_count(num_train, "num_train")
    num_val = check_count(num_val, "num_val")
    h, w = check_size(image_size, "image_size")
    paths = {
        "root": out_dir,
        "train_images": os.path.join(out_dir, "train"),
        "val_images": os.path.join(out_dir, "val"),
        "train_json": os.path.join(out_dir, "annotations", "instances_train.json"),
        "val_json": os.path.join(out_dir, "annotations", "instances_val.json"),
    }
    prepare_dir(paths["train_images"], ["*.jpg"], overwrite)
    prepare_dir(paths["val_images"], ["*.jpg"], overwrite)
    prepare_dir(os.path.dirname(paths["train_json"]), ["instances_train.json", "instances_val.json"], overwrite)
    for split, num in (("train", num_train), ("val", num_val)):
        json_dump(_coco_split(paths[f"{split}_images"], split, num, h, w, seed), paths[f"{split}_json"])
    return paths
