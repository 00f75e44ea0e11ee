"""ViTDet data: the large-scale-jitter (LSJ) loader and dataset registration (COCO and the toy COCO set).

LSJ as in ViTDet (``projects/ViTDet/configs/common/coco_loader_lsj.py`` upstream, which is not in the pip
package): training images are flipped horizontally, resized by a random factor in ``[0.1, 2.0]`` of the target
size (:class:`~detectron2.data.transforms.ResizeScale`) and cropped to ``image_size x image_size``
(:class:`~detectron2.data.transforms.FixedSizeCrop`, no padding: the model pads to a square through
``SimpleFeaturePyramid(square_pad=...)``); boxes are recomputed from the (cropped) masks. Test images are
resized so that the longer side is ``image_size`` (``ResizeShortestEdge(image_size, max_size=image_size)``).
Images are RGB. ``image_size`` is a parameter (1024 for COCO, 128-192 for the toy set).

Datasets
    * COCO 2017: detectron2 registers ``coco_2017_train`` / ``coco_2017_val`` when ``detectron2.data`` is first
      imported, below ``$DETECTRON2_DATASETS`` (default ``./datasets``): ``coco/train2017``, ``coco/val2017``,
      ``coco/annotations/instances_{train,val}2017.json``. Set the variable **before** importing detectron2;
      :func:`check_datasets_available` gives a clear error when the files are not there.
    * The toy set of :func:`toydata.make_toy_coco`: :func:`register_toy_coco` registers
      ``<prefix>_train`` / ``<prefix>_val`` from ``root/annotations/instances_{train,val}.json`` and
      ``root/{train,val}``.
"""

from __future__ import annotations

import json
import os

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "lsj_dataloader",
    "register_toy_coco",
    "toy_coco_split_paths",
    "check_datasets_available",
    "TOY_COCO_ENV",
]

#: Environment variable naming the toy COCO root (see :func:`register_toy_coco`).
TOY_COCO_ENV = "TOY_COCO_ROOT"


def lsj_dataloader(
    image_size: int = 1024,
    train_names: str | list = "coco_2017_train",
    test_names: str | list = "coco_2017_val",
    total_batch_size: int = 64,
    num_workers: int = 4,
    test_num_workers: int | None = None,
    min_scale: float = 0.1,
    max_scale: float = 2.0,
) -> DictConfig:
    """The ``dataloader`` node of a LazyConfig: ``train`` (LSJ), ``test`` and ``evaluator`` (COCOEvaluator).

    Every piece is a ``LazyCall``, so ``key=value`` overrides such as ``dataloader.train.total_batch_size=16``
    work. The evaluator uses pycocotools (``use_fast_impl=False``: detectron2's compiled COCOeval may be absent).
    """
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train_names),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.RandomFlip)(horizontal=True),
                L(T.ResizeScale)(
                    min_scale=min_scale, max_scale=max_scale, target_height=image_size, target_width=image_size
                ),
                L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
            ],
            image_format="RGB",
            use_instance_mask=True,
            recompute_boxes=True,
        ),
        total_batch_size=total_batch_size,
        num_workers=num_workers,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test_names, filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=num_workers if test_num_workers is None else test_num_workers,
    )
    dataloader.evaluator = L(COCOEvaluator)(
        dataset_name="${..test.dataset.names}",
        use_fast_impl=False,
        output_dir=None,
    )
    return dataloader


def toy_coco_split_paths(root: str) -> dict:
    """``{split: (json_file, image_dir)}`` of a toy COCO set written by ``toydata.make_toy_coco``."""
    return {
        split: (os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split))
        for split in ("train", "val")
    }


def register_toy_coco(root: str, name_prefix: str = "toy_coco") -> list[str]:
    """Register ``<name_prefix>_train`` / ``<name_prefix>_val`` (COCO instances) from a toy COCO folder.

    ``root`` holds ``annotations/instances_{train,val}.json`` and ``{train,val}/`` images (the layout of
    :func:`toydata.make_toy_coco`, i.e. ``<toy root>/coco`` of ``ensure_toy_data``). Registering again
    with the same files is a no-op; with other files the old registration is replaced. Returns the names.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    names = []
    for split, (json_file, image_root) in toy_coco_split_paths(root).items():
        if not os.path.isfile(json_file) or not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"toy COCO set incomplete at {root}: need {json_file} and {image_root}/ (make one with "
                "toydata.make_toy_coco(root, ...) or ensure_toy_data(dir) and use dir/coco)"
            )
        name = f"{name_prefix}_{split}"
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
                names.append(name)
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return names


def _as_list(names) -> list[str]:
    if isinstance(names, str):
        return [names]
    return [str(n) for n in names]


def check_datasets_available(names) -> None:
    """Raise a clear error if a dataset name is unknown or its COCO json / image folder is missing."""
    registered = set(DatasetCatalog.list())
    for name in _as_list(names):
        if name not in registered:
            hint = ""
            if name.startswith("toy_coco"):
                hint = f" Set {TOY_COCO_ENV}=<folder made by toydata.make_toy_coco> (or train.toy_coco_root)."
            raise KeyError(f"dataset {name!r} is not registered.{hint}")
        meta = MetadataCatalog.get(name)
        json_file = getattr(meta, "json_file", None)
        image_root = getattr(meta, "image_root", None)
        missing = [p for p in (json_file, image_root) if p is not None and not os.path.exists(p)]
        if missing:
            hint = ""
            if name.startswith("coco_"):
                hint = (
                    " detectron2 looks for COCO below $DETECTRON2_DATASETS (currently "
                    f"{os.environ.get('DETECTRON2_DATASETS', '<unset>, i.e. ./datasets')}), read when detectron2.data "
                    "is first imported: set it before starting, e.g. DETECTRON2_DATASETS=/data so that "
                    "/data/coco/annotations/instances_train2017.json exists."
                )
            raise FileNotFoundError(f"dataset {name!r}: missing {', '.join(missing)}.{hint}")
        if json_file is not None and os.path.getsize(json_file) <= CHECKED_JSON_BYTES:
            check_coco_json(json_file)


#: COCO json files up to this size are parsed once up front, so that a broken one is reported with its name
#: (detectron2's own loader reports a bare JSONDecodeError, or "min() arg is an empty sequence" without categories).
CHECKED_JSON_BYTES = 64 * 2**20


def check_coco_json(json_file: str) -> None:
    """Raise ``ValueError`` naming ``json_file`` if it is not JSON, or has no ``images`` or no ``categories``."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file} is not a valid COCO json file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_file} is not a COCO json file (its top level is not an object)")
    for key in ("images", "categories"):
        if not data.get(key):
            raise ValueError(f"{json_file} has no {key!r}: not a COCO instance annotation file")
