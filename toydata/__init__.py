"""Deterministic toy data: unlabeled pretraining images, a COCO instance set and two ADE20K-style sets.

The toy sets exist so that every stage of the toolkit (pretraining, conversion, ViTDet transfer, Segmenter
transfer, probes) can be exercised end to end on a CPU in minutes, without downloading anything.

Layout written by :func:`make_toy_all` (and by the idempotent :func:`ensure_toy_data`) for a :class:`ToySpec`::

    root/
      images/img_00000.jpg ...                      unlabeled pretraining images (flat folder; texture-world
                                                    scenes by default, COCO-like object scenes on request)
      coco/train/000000000001.jpg ...               COCO instance set (toydata.coco)
      coco/val/000000000001.jpg ...
      coco/annotations/instances_train.json
      coco/annotations/instances_val.json
      coco/depth/train/000000000001.png ...         16-bit depth maps from the layer order (toydata.depth)
      ade/images/training/ADE_train_00000000.jpg    ADE20K layout (MMSeg ``ADE20KDataset``; toydata.ade)
      ade/images/validation/ADE_val_00000000.jpg
      ade/annotations/training/ADE_train_00000000.png   8-bit labels, 0 = other/ignore, 1..K = classes
      ade/annotations/validation/ADE_val_00000000.png
      ade_texture/...                               the same layout, classes defined by texture
      .complete                                     JSON of the spec (ToySpec.marker(), written last)

Modules: :mod:`toydata.scenes` paints the scenes (arrays only), :mod:`toydata.images`, :mod:`toydata.coco` and
:mod:`toydata.ade` write one kind of set each, :mod:`toydata.spec` describes a whole root and
:mod:`toydata.sets` writes one.

Determinism
    Every image draws from its own ``numpy.random.Generator(PCG64(SeedSequence((seed, kind, split, index))))``,
    images are saved with fixed encoder parameters and JSON is written with sorted keys and fixed separators,
    so one seed gives byte-identical files (for one numpy/Pillow/libjpeg/pycocotools build) and different seeds
    differ.

Dependencies: numpy, Pillow, pycocotools (its polygon rasteriser) and the standard library.
"""

from __future__ import annotations

from toydata.ade import ADE_CLASS_NAMES, make_toy_ade, toy_ade_metainfo
from toydata.coco import COCO_CATEGORIES, make_toy_coco
from toydata.depth import make_toy_depth
from toydata.images import IMAGE_SCENES, make_toy_images, toy_texture_classes
from toydata.scenes import ADE_APPEARANCES, MAX_OCCLUSION, polygon_mask
from toydata.sets import ensure_toy_data, make_toy_all, toy_data_paths
from toydata.spec import GENERATOR_VERSION, AdeSpec, CocoSpec, ImagesSpec, ToySpec

__all__ = [
    "ADE_APPEARANCES",
    "ADE_CLASS_NAMES",
    "COCO_CATEGORIES",
    "GENERATOR_VERSION",
    "IMAGE_SCENES",
    "MAX_OCCLUSION",
    "AdeSpec",
    "CocoSpec",
    "ImagesSpec",
    "ToySpec",
    "ensure_toy_data",
    "make_toy_ade",
    "make_toy_all",
    "make_toy_coco",
    "make_toy_depth",
    "make_toy_images",
    "polygon_mask",
    "toy_ade_metainfo",
    "toy_data_paths",
    "toy_texture_classes",
]
