"""Depth maps from the toy scenes' layer order: a hand-made case, the written PNGs agree with the annotations, and
the COCO set's own files stay byte-identical."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from toydata import make_toy_coco, make_toy_depth
from toydata.depth import depth_map


def _square(x0, y0, x1, y1):
    return {"segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}


def test_depth_map_of_two_overlapping_squares():
    d = depth_map([_square(1, 1, 5, 5), _square(4, 4, 8, 8)], 10, 10)  # K = 2: depths 2/3 then 1/3
    assert d[0, 0] == 1.0 and d[2, 2] == pytest.approx(2 / 3)
    assert d[6, 6] == pytest.approx(1 / 3) and d[4, 4] == pytest.approx(1 / 3)  # the later square is in front
    assert depth_map([], 3, 4).tolist() == [[1.0] * 4] * 3


def _hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_make_toy_depth_adds_files_and_changes_none(tmp_path):
    root = str(tmp_path / "coco")
    make_toy_coco(root, num_train=2, num_val=1, image_size=(48, 48), seed=0)
    before = _hashes(root)
    folders = make_toy_depth(root)
    after = _hashes(root)
    assert {k: after[k] for k in before} == before  # every existing file byte-identical
    assert sorted(set(after) - set(before)) == [
        "depth/train/000000000001.png",
        "depth/train/000000000002.png",
        "depth/val/000000000001.png",
    ]
    coco = json.load(open(os.path.join(root, "annotations", "instances_val.json")))
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    png = np.asarray(Image.open(os.path.join(folders["val"], "000000000001.png")))
    assert png.dtype == np.uint16
    levels = {round(65535 * (1 - i / (len(anns) + 1))) for i in range(1, len(anns) + 1)} | {65535}
    assert set(np.unique(png).tolist()) <= levels and len(np.unique(png)) >= 2


def test_make_toy_data_depth_command(tmp_path, capsys):
    import importlib.util

    from tests.support.paths import REPO

    spec = importlib.util.spec_from_file_location("tool_mtd", os.path.join(REPO, "tools", "make_toy_data.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    root = str(tmp_path / "coco")
    make_toy_coco(root, num_train=1, num_val=1, image_size=(32, 32), seed=0)
    assert mod.main(["--out", root, "--what", "depth"]) == 0
    assert "depth val" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        mod.main(["--out", str(tmp_path / "none"), "--what", "depth"])
    assert e.value.code == 2
