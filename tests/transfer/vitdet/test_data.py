"""LSJ mapping, toy-set registration and a clear error when COCO is missing."""

import os

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import instantiate  # noqa: E402


@pytest.fixture(scope="module")
def toy_sets(tmp_path_factory):
    """Two toy COCO sets: ``a`` (3 train images) and ``b`` (2 train images), and a root where none exists."""
    from toydata import make_toy_coco

    root = tmp_path_factory.mktemp("toy_coco")
    make_toy_coco(str(root / "a"), num_train=3, num_val=1, image_size=(96, 128), seed=0)
    make_toy_coco(str(root / "b"), num_train=2, num_val=1, image_size=(96, 128), seed=1)
    return root


def test_registering_a_toy_set_returns_its_train_and_val_names(toy_sets):
    from transfer.vitdet.data import register_toy_coco

    assert register_toy_coco(str(toy_sets / "a"), name_prefix="toy_coco_unit_names") == [
        "toy_coco_unit_names_train",
        "toy_coco_unit_names_val",
    ]


def test_registering_the_same_files_again_is_a_no_op(toy_sets):
    from detectron2.data import DatasetCatalog

    from transfer.vitdet.data import register_toy_coco

    register_toy_coco(str(toy_sets / "a"), name_prefix="toy_coco_unit_again")
    register_toy_coco(str(toy_sets / "a"), name_prefix="toy_coco_unit_again")  # same files: no-op
    assert len(DatasetCatalog.get("toy_coco_unit_again_train")) == 3


def test_registering_other_files_under_a_taken_name_replaces_them(toy_sets):
    from detectron2.data import DatasetCatalog

    from transfer.vitdet.data import register_toy_coco

    register_toy_coco(str(toy_sets / "a"), name_prefix="toy_coco_unit_replaced")
    register_toy_coco(str(toy_sets / "b"), name_prefix="toy_coco_unit_replaced")  # other files: replaced
    assert len(DatasetCatalog.get("toy_coco_unit_replaced_train")) == 2


def test_a_loaded_toy_set_carries_the_toy_class_names(toy_sets):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from transfer.vitdet.data import register_toy_coco

    register_toy_coco(str(toy_sets / "a"), name_prefix="toy_coco_unit_classes")
    DatasetCatalog.get("toy_coco_unit_classes_train")  # loading the json fills in the metadata
    assert MetadataCatalog.get("toy_coco_unit_classes_train").thing_classes[:2] == ["disk", "square"]


def test_registered_toy_sets_count_as_available(toy_sets):
    from transfer.vitdet.data import check_datasets_available, register_toy_coco

    register_toy_coco(str(toy_sets / "a"), name_prefix="toy_coco_unit_available")
    check_datasets_available(["toy_coco_unit_available_train", "toy_coco_unit_available_val"])  # does not raise


def test_registering_a_toy_root_without_the_files_fails_as_incomplete(toy_sets):
    from transfer.vitdet.data import register_toy_coco

    with pytest.raises(FileNotFoundError, match="incomplete"):
        register_toy_coco(str(toy_sets / "missing"), name_prefix="toy_coco_unit_missing")


@pytest.fixture(scope="module")
def lsj_mapped(toy_sets):
    """The 64 px LSJ dataloader's mappers on toy set ``b``: every train image mapped 4 times, one val image."""
    from detectron2.data import DatasetCatalog

    from transfer.vitdet.data import lsj_dataloader, register_toy_coco

    register_toy_coco(str(toy_sets / "b"), name_prefix="toy_coco_unit_lsj")
    dl = lsj_dataloader(image_size=64, train_names="toy_coco_unit_lsj_train", test_names="toy_coco_unit_lsj_val")
    mapper = instantiate(dl.train.mapper)
    torch.manual_seed(0)
    train = [mapper(d) for d in DatasetCatalog.get("toy_coco_unit_lsj_train") * 4]
    test = instantiate(dl.test.mapper)(DatasetCatalog.get("toy_coco_unit_lsj_val")[0])
    return train, test


def test_lsj_train_images_are_at_most_the_image_size_unpadded(lsj_mapped):
    """ResizeScale (0.1-2.0 of 64) then FixedSizeCrop(64), no padding."""
    for out in lsj_mapped[0]:
        _, h, w = out["image"].shape
        assert h <= 64 and w <= 64


def test_lsj_train_instances_keep_one_mask_per_box(lsj_mapped):
    for out in lsj_mapped[0]:
        inst = out["instances"]
        assert inst.has("gt_masks") and len(inst) == len(inst.gt_boxes)


def test_lsj_train_boxes_lie_inside_the_cropped_image(lsj_mapped):
    for out in lsj_mapped[0]:
        _, h, w = out["image"].shape
        boxes = out["instances"].gt_boxes.tensor
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all())


def test_lsj_test_mapper_resizes_the_longer_side_to_the_image_size(lsj_mapped):
    assert max(lsj_mapped[1]["image"].shape[1:]) == 64


def test_missing_coco_names_the_env_var_pointing_at_it():
    from detectron2.data import MetadataCatalog

    from transfer.vitdet.data import check_datasets_available

    if os.path.isfile(MetadataCatalog.get("coco_2017_val").json_file):
        pytest.skip("COCO is installed here")
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        check_datasets_available("coco_2017_val")


def test_an_unregistered_toy_set_names_the_env_var_pointing_at_it():
    from transfer.vitdet.data import check_datasets_available

    with pytest.raises(KeyError, match="TOY_COCO_ROOT"):
        check_datasets_available("toy_coco_nowhere_train")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"images": [', "is not a valid COCO json file"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "has no 'categories'"),
        ("[1, 2]", "its top level is not an object"),
    ],
)
def test_a_broken_coco_json_is_reported_with_its_file_name(tmp_path, content, message):
    from transfer.vitdet.data import check_coco_json

    path = tmp_path / "instances_train.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"{path}.*{message}|{path} {message}"):
        check_coco_json(str(path))
