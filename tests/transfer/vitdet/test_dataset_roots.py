"""The toy COCO root (transfer/vitdet/train.py, transfer/dataset_roots.py): one variable, TOY_COCO_ROOT; the error
names it and the path it looked at; DETECTRON2_DATASETS alone is reported as ignored, not silently used."""

import logging
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig  # noqa: E402

from tests.support.paths import REPO  # noqa: E402
from tests.transfer.vitdet.helpers import CFG_DIR  # noqa: E402
from transfer.vitdet.train import toy_coco_root  # noqa: E402

TOY_CFG = os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py")
_VARIABLES = ("TOY_COCO_ROOT", "DETECTRON2_DATASETS")


@pytest.fixture(scope="module")
def toy_coco(tmp_path_factory):
    from toydata import make_toy_coco

    root = str(tmp_path_factory.mktemp("coco_roots") / "coco")
    make_toy_coco(root, num_train=2, num_val=1, image_size=(64, 64), seed=0)
    return root


@pytest.fixture
def cfg(monkeypatch):
    for k in _VARIABLES:
        monkeypatch.delenv(k, raising=False)
    return LazyConfig.load(TOY_CFG)


def test_the_toy_root_comes_from_toy_coco_root(cfg, monkeypatch, toy_coco):
    monkeypatch.setenv("TOY_COCO_ROOT", toy_coco)
    assert toy_coco_root(cfg) == toy_coco


def test_a_command_line_toy_root_wins_over_the_variable(cfg, monkeypatch, toy_coco):
    monkeypatch.setenv("TOY_COCO_ROOT", "/nowhere")
    assert toy_coco_root(cfg, [f"train.toy_coco_root={toy_coco}"]) == toy_coco


def test_a_missing_toy_root_names_the_variable_and_the_path(cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("TOY_COCO_ROOT", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError) as e:
        toy_coco_root(cfg)
    assert f"not found at {tmp_path / 'absent'} ($TOY_COCO_ROOT)" in str(e.value)
    assert "Set TOY_COCO_ROOT=<folder>" in str(e.value)


def test_only_detectron2_datasets_set_is_reported_as_ignored(cfg, monkeypatch, tmp_path, caplog):
    monkeypatch.chdir(tmp_path)  # no data/toy/coco below the working directory
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/coco-parent")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(FileNotFoundError, match="TOY_COCO_ROOT is unset") as e:
            toy_coco_root(cfg, names=["toy_coco_train"])
    note = "DETECTRON2_DATASETS=/data/coco-parent is set, but this config reads TOY_COCO_ROOT (unset)"
    assert note in str(e.value) and note in caplog.text


def test_the_entry_names_toy_coco_root_and_the_default_path_when_the_toy_set_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in _VARIABLES}
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "transfer.vitdet.train", "--config-file", TOY_CFG, "--output", str(tmp_path / "o")],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"not found at {tmp_path / 'data' / 'toy' / 'coco'} (the config's default; TOY_COCO_ROOT is unset)" in last
    assert f"DETECTRON2_DATASETS={tmp_path} is set, but this config reads TOY_COCO_ROOT" in last
