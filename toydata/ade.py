"""The toy ADE20K-layout semantic-segmentation sets (:func:`make_toy_ade`) and their MMSeg metainfo.

Label scheme
    Labels ``1..K`` use the first ``K`` ADE20K class names (:data:`ADE_CLASS_NAMES`), so MMSeg's
    ``ADE20KDataset`` with ``reduce_zero_label=True`` maps them to ``0..K-1``; ``0`` marks "other" clutter and
    becomes 255 (ignore). The scenes are :func:`toydata.scenes.ade_scene`'s: two stuff classes under a wavy
    horizon, things and clutter on top.

Appearance
    ``colour`` (``ade/``): each class has a dataset-wide colour and texture style, jittered per image, so colour
    nearly gives the class away. ``texture`` (``ade_texture/``): each class has a fixed pattern and colours are
    drawn per region independently of the class, so only texture tells the classes apart.
"""

from __future__ import annotations

import os

from toydata._checks import check_count, check_seed, check_size
from toydata._files import prepare_dir, save_label_png, save_rgb_jpeg
from toydata.scenes import ADE_PATTERNS, ade_class_styles, ade_scene, stream_rng

#: The first ADE20K class names as spelled in MMSeg (label k of the toy set is ADE20K class k, 1-based).
ADE_CLASS_NAMES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed ",  # sic: mmseg's ADE20KDataset spells it with a trailing space
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
)


def check_num_classes(num_classes: int, name: str = "num_classes", appearances: tuple[str, ...] = ()) -> int:
    """``num_classes`` as an ``int`` in ``2..len(ADE_CLASS_NAMES)``; with ``"texture"`` in ``appearances`` also at
    most one class per pattern of :data:`~toydata.scenes.ADE_PATTERNS`."""
    num_classes = check_count(num_classes, name, minimum=2)
    if num_classes > len(ADE_CLASS_NAMES):
        raise ValueError(f"{name} must be <= {len(ADE_CLASS_NAMES)}, got {num_classes}")
    if "texture" in appearances and num_classes > len(ADE_PATTERNS):
        raise ValueError(
            f"{name} must be <= {len(ADE_PATTERNS)} (the texture ADE set has one pattern per class), got {num_classes}"
        )
    return num_classes


def toy_ade_metainfo(num_classes: int = 6, seed: int = 0, appearance: str = "colour") -> dict:
    """MMSeg metainfo for the toy ADE set after ``reduce_zero_label``: the first ``num_classes`` ADE names.

    The names are spelled exactly as in ``mmseg.datasets.ADE20KDataset.METAINFO`` (including its ``"bed "``), so
    passing ``metainfo=toy_ade_metainfo(K)`` to ``ADE20KDataset`` gives the identity label map on ``0..K-1``.
    The palette is the toy set's class colours for ``seed``.
    """
    num_classes = check_num_classes(num_classes)
    styles = ade_class_styles(check_seed(seed), num_classes, appearance)
    palette = [[int(round(float(v))) for v in s["colour"]] for s in styles[1:]]
    return {"classes": tuple(ADE_CLASS_NAMES[:num_classes]), "palette": palette}


def make_toy_ade(
    out_dir: str,
    num_train: int = 24,
    num_val: int = 8,
    image_size: int | tuple[int, int] = (256, 256),
    seed: int = 0,
    num_classes: int = 6,
    overwrite: bool = False,
    appearance: str = "colour",
) -> dict[str, str]:
    """Write an ADE20K-layout semantic-segmentation set (MMSeg ``ADE20KDataset``: ``.jpg`` images, ``.png`` labels).

    Files: ``out_dir/images/{training,validation}/ADE_{train,val}_<08d>.jpg`` and the same basenames as 8-bit
    single-channel PNGs under ``out_dir/annotations/{training,validation}``. Label 0 = other (ignored after
    ``reduce_zero_label``), labels ``1..num_classes`` = the first ``num_classes`` ADE20K classes.

    ``appearance`` (:data:`~toydata.scenes.ADE_APPEARANCES`): ``"colour"``, every class has its own colour (and
    texture kind), so colour alone nearly gives the class away; ``"texture"``, every class has its own pattern
    (stripe orientation/period, checker size, noise, flat) and colours are drawn per region independently of the
    class, so only the pattern tells classes apart and a probe must read texture, not colour.

    Returns a dict of paths: ``root``, ``train_images``, ``val_images``, ``train_labels``, ``val_labels``.
    """
    seed = check_seed(seed)
    num_train = check_count(num_train, "num_train")
    num_val = check_count(num_val, "num_val")
    num_classes = check_num_classes(num_classes)
    h, w = check_size(image_size, "image_size")
    styles = ade_class_styles(seed, num_classes, appearance)  # checks appearance before anything is written
    paths = {
        "root": out_dir,
        "train_images": os.path.join(out_dir, "images", "training"),
        "val_images": os.path.join(out_dir, "images", "validation"),
        "train_labels": os.path.join(out_dir, "annotations", "training"),
        "val_labels": os.path.join(out_dir, "annotations", "validation"),
    }
    for split in ("train", "val"):
        prepare_dir(paths[f"{split}_images"], [f"ADE_{split}_*.jpg"], overwrite)
        prepare_dir(paths[f"{split}_labels"], [f"ADE_{split}_*.png"], overwrite)
    stream = "ade" if appearance == "colour" else f"ade-{appearance}"
    for split, num in (("train", num_train), ("val", num_val)):
        for i in range(num):
            img, label = ade_scene(stream_rng(seed, stream, split, i), h, w, styles)
            stem = f"ADE_{split}_{i:08d}"
            save_rgb_jpeg(img, os.path.join(paths[f"{split}_images"], stem + ".jpg"))
            save_label_png(label, os.path.join(paths[f"{split}_labels"], stem + ".png"))
    return paths
