"""tools/make_toy_data.py."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from toydata.spec import AdeSpec, CocoSpec, ImagesSpec, ToySpec


@pytest.fixture()
def cli(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_toy_data", os.path.join(repo_root, "tools", "make_toy_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ADE_ARGS = ["--what", "ade", "--num-train", "2", "--num-val", "1", "--size", "64x96"]


def test_cli_writes_an_ade_set_of_the_requested_size(tmp_path, capsys, cli):
    out = str(tmp_path / "ade")
    assert cli.main(["--out", out, *ADE_ARGS]) == 0
    assert "train_images" in capsys.readouterr().out
    with Image.open(os.path.join(out, "images", "training", "ADE_train_00000000.jpg")) as im:
        assert im.size == (96, 64)


def test_cli_refuses_to_overwrite_without_the_flag(tmp_path, capsys, cli):
    out = str(tmp_path / "ade")
    cli.main(["--out", out, *ADE_ARGS])
    with pytest.raises(SystemExit):
        cli.main(["--out", out, *ADE_ARGS])
    assert "overwrite" in capsys.readouterr().err


def test_cli_all_writes_the_spec_of_its_arguments_and_is_idempotent(tmp_path, capsys, cli):
    out = str(tmp_path / "toy")
    args = ["--out", out, "--num-images", "2", "--image-size", "96", "--num-train", "2", "--num-val", "1"]
    args += ["--size", "128", "--num-classes", "4", "--seed", "5"]
    assert cli.main(args) == 0
    split = dict(num_train=2, num_val=1, size=128)
    spec = ToySpec(5, ImagesSpec(num=2, size=96), CocoSpec(**split), AdeSpec(**split, num_classes=4))
    with open(os.path.join(out, ".complete"), encoding="utf-8") as f:
        assert json.load(f) == spec.marker()
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_reports_an_invalid_spec_as_a_usage_error(tmp_path, capsys, cli):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(tmp_path / "toy"), "--num-classes", "1"])
    assert exit_info.value.code == 2 and "ade.num_classes" in capsys.readouterr().err
