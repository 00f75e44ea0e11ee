"""The image folder: bad files counted and skipped, clear errors."""

import logging
import os

import pytest

from pretrain.data.dataset import SSLDataset
from pretrain.data.folder import ImageFolderDataset
from pretrain.data.multicrop import MultiCropAugmentation
from pretrain.data.position_aug import PositionScaleAugmentation


def _relative(paths, root):
    return [str(os.path.relpath(p, root)) for p in paths]


@pytest.fixture
def loaded_twice(image_dir, caplog):
    """A folder whose every index was loaded twice, with the warnings logged meanwhile."""
    root, good, bad = image_dir
    ds = ImageFolderDataset(root)
    rel = _relative(ds.paths, root)
    with caplog.at_level(logging.WARNING, logger="pretrain"):
        for _ in range(2):
            loaded = {rel[i]: ds.load(i) for i in range(len(ds))}
    warnings = [r for r in caplog.records if r.name == "pretrain" and r.levelno == logging.WARNING]
    return dict(ds=ds, root=root, loaded=loaded, warnings=warnings, bad=bad)


def test_every_file_with_an_image_extension_is_a_candidate_and_others_are_ignored(image_dir):
    root, good, bad = image_dir
    ds = ImageFolderDataset(root)
    assert len(ds) == len(good) + len(bad)
    assert ds.num_ignored == 1  # notes.txt: not an image by extension, not counted as skipped


def test_the_candidates_are_in_sorted_path_order(image_dir):
    root, _, _ = image_dir
    rel = _relative(ImageFolderDataset(root).paths, root)
    assert rel == sorted(rel)


def test_loading_an_unreadable_file_returns_none(loaded_twice):
    assert {k for k, v in loaded_twice["loaded"].items() if v is None} == loaded_twice["bad"]


def test_every_readable_image_loads_as_rgb(loaded_twice):
    assert all(v.mode == "RGB" for v in loaded_twice["loaded"].values() if v is not None)


def test_each_unreadable_file_is_recorded_once_however_often_it_is_loaded(loaded_twice):
    ds, bad = loaded_twice["ds"], loaded_twice["bad"]
    assert ds.num_skipped == len(bad)
    assert set(_relative(ds.skipped_paths, loaded_twice["root"])) == bad


def test_each_unreadable_file_is_logged_once_however_often_it_is_loaded(loaded_twice):
    assert len(loaded_twice["warnings"]) == len(loaded_twice["bad"])  # logged once each


def test_validation_at_construction_counts_the_unreadable_files(image_dir):
    root, _, bad = image_dir
    validated = ImageFolderDataset(root, validate=True)
    assert validated.num_skipped == len(bad)


def test_scan_for_corrupt_returns_the_number_of_unreadable_files(image_dir):
    root, _, bad = image_dir
    assert ImageFolderDataset(root).scan_for_corrupt() == len(bad)


def test_a_list_file_keeps_every_entry_and_skips_its_missing_and_unreadable_ones(image_dir):
    """Comments and blank lines are dropped; relative entries are read from the list file's folder."""
    root, _, _ = image_dir
    listing = root / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text("# comment\n../a.jpg\n\n../trunc.jpg\n../missing.png\n" + str(root / "d.bmp") + "\n")
    from_list = ImageFolderDataset(listing, validate=True)
    assert len(from_list) == 4 and from_list.num_skipped == 2


def test_a_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "nope")


def test_a_folder_without_image_files_is_refused(tmp_path):
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no image file"):
        ImageFolderDataset(tmp_path / "only_text")


@pytest.fixture
def all_bad_dir(tmp_path):
    (tmp_path / "all_bad").mkdir()
    (tmp_path / "all_bad" / "x.png").write_bytes(b"")
    return tmp_path / "all_bad"


def test_validating_a_folder_where_no_image_can_be_read_is_refused(all_bad_dir):
    with pytest.raises(ValueError, match="can be read"):
        ImageFolderDataset(all_bad_dir, validate=True)


def test_a_dataset_where_no_image_can_be_read_fails_at_its_first_sample(all_bad_dir):
    lazy = SSLDataset(ImageFolderDataset(all_bad_dir), MultiCropAugmentation(32, 16, 2, 1), PositionScaleAugmentation())
    with pytest.raises(RuntimeError, match="can be read"):
        lazy[0]
