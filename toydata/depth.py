"""Depth maps of the toy COCO set from its layer order (:func:`make_toy_depth`). :func:`toydata.make_toy_all` writes
them for its COCO set (``coco/depth/``); called on its own, it adds them beside an existing set and leaves every
file of the set as it is.

The scenes paint their objects in annotation order, later ones over earlier ones (``toydata/coco.py``), so the
painting order is a depth order: the background is farthest (depth 1), and the ``i``-th of an image's ``K``
objects (1-based) lies at depth ``1 - i / (K + 1)``, every visible pixel of it; nearer objects hide farther ones.
Written as 16-bit grayscale PNGs ``<root>/depth/<split>/<stem>.png`` (value ``round(depth * 65535)``, 0 = nearest).
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from toydata.scenes import polygon_mask


def depth_map(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """``(H, W)`` float64 depth in [0, 1] of one image's annotations (in painting order), as the module says."""
    depth = np.ones((height, width), dtype=np.float64)
    k = len(annotations)
    for i, ann in enumerate(annotations, start=1):
        mask = polygon_mask(ann["segmentation"][0], height, width).astype(bool)
        depth[mask] = 1.0 - i / (k + 1)
    return depth


def make_toy_depth(coco_root: str, splits=("train", "val")) -> dict[str, str]:
    """Write the depth maps of every image of ``coco_root``'s splits (annotations from
    ``annotations/instances_<split>.json``); returns ``{split: folder}``. Existing depth maps are replaced."""
    out = {}
    for split in splits:
        ann_path = os.path.join(coco_root, "annotations", f"instances_{split}.json")
        with open(ann_path) as fh:
            coco = json.load(fh)
        by_image: dict[int, list] = {}
        for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
            by_image.setdefault(ann["image_id"], []).append(ann)
        folder = os.path.join(coco_root, "depth", split)
        os.makedirs(folder, exist_ok=True)
        for img in coco["images"]:
            d = depth_map(by_image.get(img["id"], []), img["height"], img["width"])
            png = np.round(d * 65535).astype(np.uint16)
            stem = os.path.splitext(img["file_name"])[0]
            Image.fromarray(png).save(os.path.join(folder, stem + ".png"))
        out[split] = folder
    return out
