"""LSJ mapping, toy-set registration and a clear error when COCO is missing."""

import os

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import instantiate  # noqa: E402


def test_lsj_mapper_and_toy_registration(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from toydata import make_toy_coco
    from transfer.vitdet.data import check_datasets_available, lsj_dataloader, register_toy_coco

    make_toy_coco(str(tmp_path / "a"), num_train=3, num_val=1, image_size=(96, 128), seed=0)
    make_toy_coco(str(tmp_path / "b"), num_train=2, num_val=1, image_size=(96, 128), seed=1)
    assert register_toy_coco(str(tmp_path / "a"), name_prefix="toy_coco_unit") == [
        "toy_coco_unit_train",
        "toy_coco_unit_val",
    ]
    register_toy_coco(str(tmp_path / "a"), name_prefix="toy_coco_unit")  # same files: no-op
    assert len(DatasetCatalog.get("toy_coco_unit_train")) == 3
    register_toy_coco(str(tmp_path / "b"), name_prefix="toy_coco_unit")  # other files: replaced
    assert len(DatasetCatalog.get("toy_coco_unit_train")) == 2
    assert MetadataCatalog.get("toy_coco_unit_train").thing_classes[:2] == ["disk", "square"]
    check_datasets_available(["toy_coco_unit_train", "toy_coco_unit_val"])
    with pytest.raises(FileNotFoundError, match="incomplete"):
        register_toy_coco(str(tmp_path / "missing"), name_prefix="toy_coco_unit")

    dl = lsj_dataloader(image_size=64, train_names="toy_coco_unit_train", test_names="toy_coco_unit_val")
    mapper = instantiate(dl.train.mapper)
    torch.manual_seed(0)
    for d in DatasetCatalog.get("toy_coco_unit_train") * 4:
        out = mapper(d)
        _, h, w = out["image"].shape
        assert h <= 64 and w <= 64  # ResizeScale (0.1-2.0 of 64) then FixedSizeCrop(64), no padding
        inst = out["instances"]
        assert inst.has("gt_masks") and len(inst) == len(inst.gt_boxes)
        boxes = inst.gt_boxes.tensor
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all())
    test_out = instantiate(dl.test.mapper)(DatasetCatalog.get("toy_coco_unit_val")[0])
    assert max(test_out["image"].shape[1:]) == 64  # longer side -> image_size


def test_missing_coco_names_the_env_var():
    from detectron2.data import MetadataCatalog

    from transfer.vitdet.data import check_datasets_available

    if os.path.isfile(MetadataCatalog.get("coco_2017_val").json_file):
        pytest.skip("COCO is installed here")
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        check_datasets_available("coco_2017_val")
    with pytest.raises(KeyError, match="TOY_COCO_ROOT"):
        check_datasets_available("toy_coco_nowhere_train")
