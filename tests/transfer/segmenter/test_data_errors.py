"""Dataset problems through the Segmenter entry: a truncated label PNG is named (transfer/segmenter/transforms.py), and
each config reads one root variable, naming it and the path it looked at (transfer/dataset_roots.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from tests.support.paths import REPO  # noqa: E402
from tests.transfer.segmenter.helpers import CFG_DIR, TOY_CFG  # noqa: E402
from transfer.segmenter import train  # noqa: E402
from transfer.segmenter.transforms import UnreadableLabelError, read_label_png  # noqa: E402

PAPER_CFG = os.path.join(CFG_DIR, "segmenter_linear_vit_s_160k.py")
_ROOT_VARIABLES = ("ADE20K_ROOT", "TOY_ADE_ROOT")


def _entry(args, cwd=REPO, **env_vars):
    env = {k: v for k, v in os.environ.items() if k not in _ROOT_VARIABLES}
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1", **env_vars)
    proc = subprocess.run(
        [sys.executable, "-m", "transfer.segmenter.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.fixture(scope="module")
def corrupt_root(toy_root, tmp_path_factory):
    """A copy of the toy ADE set whose training label toy_0003.png is cut to half its size."""
    root = str(tmp_path_factory.mktemp("corrupt") / "ade")
    shutil.copytree(toy_root, root)
    bad = os.path.join(root, "annotations", "training", "toy_0003.png")
    _truncate(bad)
    return root, bad


def test_a_truncated_label_png_read_directly_is_named(corrupt_root):
    _, bad = corrupt_root
    with pytest.raises(UnreadableLabelError, match=f"cannot read the label file {bad} .*truncated"):
        read_label_png(bad)


def test_an_intact_label_png_reads_as_its_labels(toy_root):
    arr = read_label_png(os.path.join(toy_root, "annotations", "training", "toy_0000.png"))
    assert arr.shape == (64, 64) and arr.dtype == np.uint8 and (arr[:, :2] == 0).all() and 1 <= arr.max() <= 4


def test_the_loading_transform_names_a_truncated_label_png(corrupt_root):
    from mmseg.registry import TRANSFORMS

    _, bad = corrupt_root
    load = TRANSFORMS.build(dict(type="LoadAnnotationsNamingFile"))
    with pytest.raises(UnreadableLabelError, match=f"cannot read the label file {bad} .*truncated"):
        load(dict(seg_map_path=bad, reduce_zero_label=True, seg_fields=[]))


def test_the_ade_configs_load_labels_through_the_naming_transform():
    from mmengine.config import Config

    for path in (TOY_CFG, PAPER_CFG):
        cfg = Config.fromfile(path)
        for pipeline in (cfg.train_pipeline, cfg.test_pipeline):
            assert [s["type"] for s in pipeline if "Annotations" in s["type"]] == ["LoadAnnotationsNamingFile"]


@pytest.mark.slow
def test_the_entry_names_a_truncated_label_png_while_counting_classes(corrupt_root, ref_ckpt, tmp_path):
    root, bad = corrupt_root
    rc, out = _entry([TOY_CFG, "--init", ref_ckpt[1], "--data-root", root, "--work-dir", str(tmp_path / "w")])
    assert rc != 0
    assert f"cannot read the label file {bad}" in _last_line(out) and "truncated" in _last_line(out)


@pytest.mark.slow
def test_the_entry_names_a_truncated_label_png_in_the_training_pipeline(corrupt_root, ref_ckpt, tmp_path):
    root, bad = corrupt_root
    args = [TOY_CFG, "--init", ref_ckpt[1], "--data-root", root, "--work-dir", str(tmp_path / "w"), "--max-iters"]
    rc, out = _entry(args + ["2", "--cfg-options", "num_classes=4"])  # classes given: the loader meets the file
    assert rc != 0
    assert f"cannot read the label file {bad}" in _last_line(out) and "truncated" in _last_line(out)
    assert not os.path.exists(tmp_path / "w" / "metrics_final.json")


@pytest.mark.slow
def test_the_toy_config_given_only_ade20k_root_names_its_own_variable_and_the_path(ref_ckpt, tmp_path):
    rc, out = _entry([TOY_CFG, "--init", ref_ckpt[1]], cwd=str(tmp_path), ADE20K_ROOT="/data/ade/somewhere")
    assert rc != 0
    line = _last_line(out)
    assert f"dataset root not found at {tmp_path / 'data' / 'toy' / 'ade'}" in line
    assert "TOY_ADE_ROOT is unset" in line and "Set TOY_ADE_ROOT=<folder>" in line
    assert "ADE20K_ROOT=/data/ade/somewhere is set, but this config reads TOY_ADE_ROOT (unset)" in line


@pytest.mark.slow
def test_the_paper_config_names_ade20k_root_and_the_path_it_points_to(ref_ckpt, tmp_path):
    missing = str(tmp_path / "no_ade")
    rc, out = _entry([PAPER_CFG, "--init", ref_ckpt[1]], cwd=str(tmp_path), ADE20K_ROOT=missing)
    assert rc != 0
    assert _last_line(out).endswith(
        f"dataset root not found at {missing} ($ADE20K_ROOT): it needs images/{{training,validation}} and "
        "annotations/{training,validation}. Set ADE20K_ROOT=<folder>"
    )


def _prepared(monkeypatch, capsys, ckpt, *extra, **env_vars):
    for k in _ROOT_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    cfg, _ = train.prepare_config(train.parse_args([TOY_CFG, "--init", ckpt, *extra]))
    return cfg, capsys.readouterr().err


def test_the_toy_config_reads_toy_ade_root(monkeypatch, capsys, ref_ckpt, toy_root):
    cfg, err = _prepared(monkeypatch, capsys, ref_ckpt[1], TOY_ADE_ROOT=toy_root, ADE20K_ROOT="/elsewhere")
    assert cfg.train_dataloader.dataset.data_root == cfg.val_dataloader.dataset.data_root == toy_root
    assert "note" not in err


def test_the_toy_config_with_only_ade20k_root_says_it_ignores_it(monkeypatch, capsys, ref_ckpt, toy_root, tmp_path):
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "ade").symlink_to(toy_root)  # the config's default root, relative to the cwd
    monkeypatch.chdir(tmp_path)
    cfg, err = _prepared(monkeypatch, capsys, ref_ckpt[1], ADE20K_ROOT="/data/ade/ADEChallengeData2016")
    assert cfg.train_dataloader.dataset.data_root == "data/toy/ade"
    assert (
        "[segmenter] note: ADE20K_ROOT=/data/ade/ADEChallengeData2016 is set, but this config reads TOY_ADE_ROOT "
        "(unset) and ignores ADE20K_ROOT; using data/toy/ade"
    ) in err


def test_an_explicit_data_root_wins_over_the_variable_without_a_note(monkeypatch, capsys, ref_ckpt, toy_root):
    cfg, err = _prepared(monkeypatch, capsys, ref_ckpt[1], "--data-root", toy_root, TOY_ADE_ROOT="/nowhere")
    assert cfg.train_dataloader.dataset.data_root == toy_root and "note" not in err
