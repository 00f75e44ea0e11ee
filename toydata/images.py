"""Pretraining images (:func:`make_toy_images`) and in-memory texture classes (:func:`toy_texture_classes`)."""

from __future__ import annotations

import os

import numpy as np

from toydata._checks import check_count, check_seed, check_size
from toydata._files import prepare_dir, save_rgb_jpeg
from toydata.scenes import (
    ADE_PATTERNS,
    ade_class_styles,
    ade_class_texture,
    ade_scene,
    jitter_brightness_and_noise,
    object_scene,
    stream_rng,
)

#: Scene kinds of the unlabeled pretraining folder (:func:`make_toy_images`).
IMAGE_SCENES = ("texture", "objects")


def make_toy_images(
    out_dir: str,
    num_images: int = 256,
    size: int | tuple[int, int] = (160, 160),
    seed: int = 0,
    overwrite: bool = False,
    scenes: str = "texture",
) -> list[str]:
    """Write an unlabeled image folder for pretraining: ``out_dir/img_00000.jpg`` ... (flat, RGB JPEG).

    ``scenes`` (:data:`IMAGE_SCENES`):

    * ``"texture"`` (default): scenes of the texture world of ``ade_texture/`` (two stuff regions under a wavy
      horizon, things and clutter on top), over all :data:`~toydata.scenes.ADE_PATTERNS` (a superset of the
      probe's classes), colours drawn per region, so categories are not given by colour (on the colour-defined
      ``ade/`` set a random projection of the pixels already separates the classes; see docs/demo_recipe.md).
    * ``"objects"``: scenes like the COCO toy set's (2-6 textured shapes on varied backgrounds).

    Either kind draws from its own random streams, so no pretraining image equals a COCO or ADE image.
    Returns the list of written paths (sorted).
    """
    seed = check_seed(seed)
    num_images = check_count(num_images, "num_images", minimum=1)
    h, w = check_size(size, "size")
    if scenes not in IMAGE_SCENES:
        raise ValueError(f"scenes must be one of {IMAGE_SCENES}, got {scenes!r}")
    prepare_dir(out_dir, ["img_*.jpg"], overwrite)
    styles = ade_class_styles(seed, len(ADE_PATTERNS), "texture") if scenes == "texture" else None
    paths = []
    for i in range(num_images):
        if scenes == "texture":
            img, _ = ade_scene(stream_rng(seed, "images-texture", "none", i), h, w, styles)
        else:
            img, _ = object_scene(stream_rng(seed, "images", "none", i), h, w)
        path = os.path.join(out_dir, f"img_{i:05d}.jpg")
        save_rgb_jpeg(img, path)
        paths.append(path)
    return paths


def toy_texture_classes(
    num_per_class: int = 24,
    size: int | tuple[int, int] = (96, 96),
    num_classes: int = 6,
    seed: int = 0,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """An in-memory image-classification set of the texture world: each image is one class's pattern over the whole
    frame (the patterns of ``ade_texture/``; colours, phase and geometry jitter drawn per image, brightness and
    noise as in the scenes), so the class is told by pattern alone.

    Returns ``(images uint8 (N, H, W, 3), labels int64 (N,))``, class-major. ``split`` ("train"/"val") selects
    independent random streams; neither split shares a stream with the pretraining images."""
    seed = check_seed(seed)
    num_per_class = check_count(num_per_class, "num_per_class", minimum=1)
    h, w = check_size(size, "size")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    styles = ade_class_styles(seed, num_classes, "texture")
    images, labels = [], []
    for k in range(1, num_classes + 1):
        for i in range(num_per_class):
            rng = stream_rng(seed, "texture-classes", split, (k - 1) * num_per_class + i)
            images.append(jitter_brightness_and_noise(rng, ade_class_texture(rng, h, w, styles[k])))
            labels.append(k - 1)
    return np.stack(images), np.asarray(labels, dtype=np.int64)
