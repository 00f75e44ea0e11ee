"""The seeded dataset: substitution of bad images, determinism, workers."""

import os
import random

import pytest
import torch

from pretrain.data.collate import MaskingCollator
from pretrain.data.dataset import SSLDataset
from pretrain.data.folder import ImageFolderDataset
from pretrain.data.multicrop import MultiCropAugmentation
from pretrain.data.position_aug import PositionScaleAugmentation
from tests.support.images import enclosing_box


def _make_dataset(root, seed=0, **mc):
    kwargs = dict(global_size=32, local_size=16, n_global=2, n_local=3)
    kwargs.update(mc)
    return SSLDataset(ImageFolderDataset(root), MultiCropAugmentation(**kwargs), PositionScaleAugmentation(), seed)


def _assert_same(a, b):
    for key in ("global_crops", "local_crops"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key]))
    for key in ("global_boxes", "local_boxes", "global_flips", "local_flips"):
        assert torch.equal(a[key], b[key])
    assert a["seed"] == b["seed"] and a["pos_info"] == b["pos_info"] and a["source_index"] == b["source_index"]


@pytest.fixture(scope="module")
def one_pass(shared_image_dir):
    """One pass over a fresh dataset of the image folder: its samples and its counters right after the pass."""
    root, good, bad = shared_image_dir
    ds = _make_dataset(root)
    rel = [str(os.path.relpath(p, root)) for p in ds.images.paths]
    samples = [ds[i] for i in range(len(ds))]
    counters = {"num_substitutions": ds.num_substitutions, "num_skipped": ds.num_skipped}
    return dict(samples=samples, rel=rel, good=good, bad=bad, counters=counters)


def test_every_sample_carries_its_index_and_the_configured_finite_crops(one_pass):
    for i, s in enumerate(one_pass["samples"]):
        assert s["index"] == i
        assert len(s["global_crops"]) == 2 and s["global_crops"][0].shape == (3, 32, 32)
        assert len(s["local_crops"]) == 3 and s["local_crops"][0].shape == (3, 16, 16)
        assert all(torch.isfinite(c).all() for c in s["global_crops"] + s["local_crops"])


def test_every_sample_comes_from_a_good_image(one_pass):
    rel, good = one_pass["rel"], one_pass["good"]
    for s in one_pass["samples"]:
        assert rel[s["source_index"]] in good


def test_a_good_image_is_used_at_its_own_index_and_a_bad_one_is_substituted(one_pass):
    rel, good = one_pass["rel"], one_pass["good"]
    for i, s in enumerate(one_pass["samples"]):
        assert (s["source_index"] == i) == (rel[i] in good)


def test_every_sample_boxes_lie_in_the_virtual_image(one_pass):
    for s in one_pass["samples"]:
        enclosing = enclosing_box(torch.cat([s["global_boxes"], s["local_boxes"]]).double())
        assert min(enclosing) >= -1e-6 and max(enclosing) <= 1 + 1e-6


def test_every_sample_reports_the_position_aug_parameters(one_pass):
    for s in one_pass["samples"]:
        assert set(s["pos_info"]) == {"s", "k", "tx", "ty", "area_A"}


def test_one_pass_counts_one_substitution_and_one_skip_per_bad_image(one_pass):
    assert one_pass["counters"]["num_substitutions"] == len(one_pass["bad"])
    assert one_pass["counters"]["num_skipped"] == len(one_pass["bad"])


def test_a_bad_index_is_substituted_the_same_way_every_time(shared_image_dir):
    root, _, _ = shared_image_dir
    ds = _make_dataset(root)
    bad_index = [str(os.path.relpath(p, root)) for p in ds.images.paths].index("trunc.jpg")
    _assert_same(ds[bad_index], ds[bad_index])


def test_getitem_leaves_the_global_torch_and_python_rngs_unchanged(shared_image_dir):
    ds = _make_dataset(shared_image_dir[0])
    torch.manual_seed(1234)
    random.seed(99)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    ds[0]
    assert torch.equal(torch.get_rng_state(), torch_state), "__getitem__ changed torch's global RNG"
    assert random.getstate() == py_state, "__getitem__ changed python's global RNG"


@pytest.fixture(scope="module")
def first_sample(shared_image_dir):
    """Sample 0 of epoch 0, drawn after seeding the global RNGs to values of their own."""
    torch.manual_seed(1234)
    random.seed(99)
    return _make_dataset(shared_image_dir[0])[0]


def test_the_same_index_gives_the_same_sample_twice(shared_image_dir):
    ds = _make_dataset(shared_image_dir[0])
    _assert_same(ds[0], ds[0])


def test_a_fresh_dataset_gives_the_same_sample_for_the_same_seed_epoch_and_index(shared_image_dir, first_sample):
    _assert_same(first_sample, _make_dataset(shared_image_dir[0])[0])


def test_another_epoch_gives_another_seed_crops_and_boxes(shared_image_dir, first_sample):
    a = first_sample
    ds = _make_dataset(shared_image_dir[0])
    ds.set_epoch(1)
    b = ds[0]
    assert b["seed"] != a["seed"]
    assert not all(torch.equal(x, y) for x, y in zip(a["global_crops"], b["global_crops"]))
    assert not torch.equal(a["global_boxes"], b["global_boxes"])


def test_setting_an_epoch_back_reproduces_its_samples(shared_image_dir, first_sample):
    ds = _make_dataset(shared_image_dir[0])
    ds.set_epoch(1)
    ds[0]
    ds.set_epoch(0)
    _assert_same(first_sample, ds[0])


def test_another_dataset_seed_gives_another_sample_seed(shared_image_dir, first_sample):
    assert _make_dataset(shared_image_dir[0], seed=1)[0]["seed"] != first_sample["seed"]


def test_dataloader_workers_match_main_process(shared_image_dir):
    ds = _make_dataset(shared_image_dir[0])
    collator = MaskingCollator((2, 2))
    kwargs = dict(batch_size=4, shuffle=False, collate_fn=collator)
    main = list(torch.utils.data.DataLoader(ds, num_workers=0, **kwargs))
    workers = list(torch.utils.data.DataLoader(ds, num_workers=2, **kwargs))
    assert len(main) == len(workers) == 2
    for x, y in zip(main, workers):
        for key in ("global_crops", "local_crops", "global_boxes", "local_boxes", "content_masks", "pos_masks"):
            assert torch.equal(x[key], y[key]), key
