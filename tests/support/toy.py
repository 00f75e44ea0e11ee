"""Small toy-data specs and file helpers for the toydata tests."""

from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image

from toydata.spec import AdeSpec, CocoSpec, ImagesSpec, ToySpec

SMALL = ToySpec(
    images=ImagesSpec(num=6, size=96),
    coco=CocoSpec(num_train=8, num_val=4, size=160),
    ade=AdeSpec(num_train=6, num_val=4, size=128, num_classes=6),
)
#: SMALL with fewer images, for the tests that generate several roots
TINY = ToySpec(images=ImagesSpec(num=2, size=96), coco=CocoSpec(2, 1, size=160), ade=AdeSpec(2, 1, size=128))
#: The marker GENERATOR_VERSION 5 writes for SMALL (bytes, newline included)
SMALL_MARKER = (
    '{"ade":{"num_classes":6,"num_train":6,"num_val":4,"size":[128,128]},'
    '"coco":{"num_train":8,"num_val":4,"size":[160,160]},'
    '"images":{"num":6,"scenes":"texture","size":[96,96]},"seed":0,"version":5}\n'
)


def file_digests(root):
    """sha256 of every file under ``root``, keyed by relative path."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def read_image(path, dtype=None):
    """An image file as a numpy array (closed after reading)."""
    with Image.open(path) as im:
        return np.asarray(im, dtype=dtype)


def mtimes(root):
    return {
        os.path.relpath(os.path.join(d, n), root): os.stat(os.path.join(d, n)).st_mtime_ns
        for d, _, files in os.walk(root)
        for n in files
    }


def file_count(spec):
    """Files make_toy_all writes for ``spec``: images, COCO images, their depth maps and two JSONs, two ADE sets
    (image + label)."""
    coco, ade = spec.coco, spec.ade
    return spec.images.num + 2 * (coco.num_train + coco.num_val) + 2 + 4 * (ade.num_train + ade.num_val)
