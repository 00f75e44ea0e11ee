"""Whole toy roots: determinism, idempotence, crash safety, refusal to replace foreign folders."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import toydata
from tests.support.toy import SMALL, TINY, file_count, file_digests, mtimes
from toydata import sets


def test_same_seed_gives_the_same_bytes(same_seed_roots):
    a, b, _ = same_seed_roots
    assert a == b and len(a) == file_count(SMALL)


def test_other_seed_changes_every_file(same_seed_roots):
    a, _, c = same_seed_roots
    assert a.keys() == c.keys()
    unchanged = sorted(k for k in a if a[k] == c[k])
    assert not unchanged, f"unchanged across seeds: {unchanged}"


def test_ensure_toy_data_writes_the_bytes_of_make_toy_all_plus_its_marker(toy_root, same_seed_roots):
    written = file_digests(toy_root["root"])
    assert written.pop(".complete") and written == same_seed_roots[0]


def test_second_ensure_toy_data_call_writes_nothing(tmp_path):
    root = str(tmp_path / "toy")
    paths = toydata.ensure_toy_data(root, TINY)
    before = mtimes(root)
    assert toydata.ensure_toy_data(root, TINY) == paths
    assert mtimes(root) == before


def test_ensure_toy_data_regenerates_in_place_for_another_spec(tmp_path):
    root = str(tmp_path / "toy")
    paths = toydata.ensure_toy_data(root, TINY)
    digests = file_digests(root)
    toydata.ensure_toy_data(root, dataclasses.replace(TINY, seed=1))
    assert file_digests(root) != digests
    with open(paths["marker"], encoding="utf-8") as f:
        assert json.load(f)["seed"] == 1
    toydata.ensure_toy_data(root, dataclasses.replace(TINY, seed=1, coco=dataclasses.replace(TINY.coco, num_val=2)))
    assert len(os.listdir(paths["coco_val_images"])) == 2
    assert sorted(os.listdir(tmp_path)) == ["toy"], "no temporary or stale folders left behind"


def test_force_regenerates_identical_bytes(tmp_path):
    root = str(tmp_path / "toy")
    toydata.ensure_toy_data(root, TINY)
    before, digests = mtimes(root), file_digests(root)
    toydata.ensure_toy_data(root, TINY, force=True)
    assert mtimes(root) != before and file_digests(root) == digests


def test_crash_during_generation_leaves_the_previous_set_untouched(tmp_path, monkeypatch):
    root = str(tmp_path / "toy")
    toydata.ensure_toy_data(root, TINY)
    digests = file_digests(root)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(sets, "make_toy_ade", crash)  # after images/ and coco/ are written into the temporary
    with pytest.raises(RuntimeError, match="simulated crash"):
        toydata.ensure_toy_data(root, dataclasses.replace(TINY, seed=1))
    assert file_digests(root) == digests
    assert sorted(os.listdir(tmp_path)) == ["toy"], "the temporary folder must be removed"


def test_ensure_toy_data_keeps_the_set_of_a_caller_that_finished_first(tmp_path, monkeypatch):
    root = str(tmp_path / "toy")
    real_make_toy_all, rival = sets.make_toy_all, {}

    def rival_finishes_first(tmp, spec, overwrite=False):
        monkeypatch.setattr(sets, "make_toy_all", real_make_toy_all)
        toydata.ensure_toy_data(root, spec)  # another rank, start to end, while we generate
        rival["mtimes"] = mtimes(root)
        return real_make_toy_all(tmp, spec, overwrite)

    monkeypatch.setattr(sets, "make_toy_all", rival_finishes_first)
    toydata.ensure_toy_data(root, TINY)
    assert rival["mtimes"] and mtimes(root) == rival["mtimes"]
    assert sorted(os.listdir(tmp_path)) == ["toy"]


def test_ensure_toy_data_refuses_to_replace_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing"):
        toydata.ensure_toy_data(str(foreign), TINY)
    assert sorted(os.listdir(foreign)) == ["keep.txt"] and (foreign / "keep.txt").read_text() == "precious"


def test_ensure_toy_data_refuses_a_file_as_root(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        toydata.ensure_toy_data(str(tmp_path / "file"), TINY)


def test_import_toydata_needs_neither_torch_nor_the_other_packages(repo_root):
    top_level = "{m.split('.')[0] for m in sys.modules}"
    code = f"import sys, toydata; print(sorted({top_level} & {{'torch', 'pretrain', 'transfer'}}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
