"""Bad input: non-zero exit, a message naming the problem, no output file."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from pretrain.export import export_backbone
from tests.transfer.convert.references import (
    D,
    convert,
    mae_checkpoint,
    ours_model,
    saved,
)
from transfer.convert.cli import main

# bad input: non-zero exit, a message naming the problem, no output file


def _fails(tmp_path, capsys, src, target="timm", *extra, expect=()):
    dst = tmp_path / "out.pth"
    rc = main(["--src", str(src), "--dst", str(dst), "--target", target, "--grid", "4", "4", *extra])
    err = capsys.readouterr().err
    assert rc != 0
    for e in expect:
        assert e in err, err
    assert not dst.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # no temp file left either
    return err


def _exported_with(tmp_path, edit):
    model = ours_model(field=True)
    src = tmp_path / "backbone.pth"
    obj = export_backbone(model, src)
    edit(obj["model"])
    torch.save(obj, src)
    return src


def test_a_text_file_is_refused_as_not_a_pytorch_checkpoint(tmp_path, capsys):
    src = tmp_path / "notes.txt"
    src.write_text("this is not a checkpoint\n")
    _fails(tmp_path, capsys, src, expect=("not a PyTorch checkpoint",))


def test_a_missing_source_file_is_refused_as_not_found(tmp_path, capsys):
    _fails(tmp_path, capsys, tmp_path / "missing.pth", expect=("not found",))


@pytest.mark.parametrize(
    "obj, named",
    [
        ({"encoder_layers": {"w": torch.zeros(3)}, "epoch": 3}, "epoch"),
        ({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, "conv1.weight"),
        ([torch.zeros(2)], "list"),
    ],
    ids=["nested-dict", "resnet-state-dict", "list"],
)
def test_an_unknown_layout_is_refused_naming_what_the_file_holds(tmp_path, capsys, obj, named):
    src = saved(obj, tmp_path / "weird.pth")
    _fails(tmp_path, capsys, src, expect=("unknown checkpoint layout", named))


def test_a_missing_block_tensor_is_refused_naming_it(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.pop("blocks.1.mlp.fc2.weight"))
    _fails(tmp_path, capsys, src, expect=("missing tensor", "blocks.1.mlp.fc2.weight"))


def test_a_missing_position_field_is_refused_as_a_missing_position_embedding(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.pop("pos_field.field"))
    _fails(tmp_path, capsys, src, expect=("missing position embedding", "pos_field.field"))


def test_a_wrongly_shaped_tensor_is_refused_naming_it_and_its_shape(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.__setitem__("blocks.0.attn.proj.weight", torch.zeros(D, D + 1)))
    _fails(tmp_path, capsys, src, expect=("wrong shape", "blocks.0.attn.proj.weight", "(64, 65)"))


def test_an_unknown_key_is_refused_naming_it(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.__setitem__("blocks.0.attn.q_norm.weight", torch.ones(32)))
    _fails(tmp_path, capsys, src, expect=("unknown key", "blocks.0.attn.q_norm.weight"))


@pytest.fixture(scope="module")
def exported_with_registers(tmp_path_factory):
    torch.manual_seed(0)
    model = ours_model(field=True, regs=2)
    src = tmp_path_factory.mktemp("registers") / "backbone.pth"
    export_backbone(model, src)
    return src


@pytest.mark.parametrize(
    "target, expect",
    [("mmseg", ("2 register tokens", "--drop-registers")), ("detectron2", ("register tokens", "--keep-tokens"))],
)
def test_registers_are_refused_for_a_target_without_them_naming_the_flag_that_decides(
    tmp_path, capsys, exported_with_registers, target, expect
):
    _fails(tmp_path, capsys, exported_with_registers, target, expect=expect)


@pytest.fixture(scope="module")
def dino_like_with_python_objects(tmp_path_factory):
    """An MAE checkpoint carrying an ``argparse.Namespace``, as old DINO/iBOT checkpoints do."""
    torch.manual_seed(0)
    ckpt, _ = mae_checkpoint()
    ckpt["args"] = argparse.Namespace(arch="vit_small")
    return saved(ckpt, tmp_path_factory.mktemp("dino_like") / "dino_like.pth")


def test_python_objects_in_a_checkpoint_are_refused_without_unsafe_load(
    tmp_path, capsys, dino_like_with_python_objects
):
    src = dino_like_with_python_objects
    _fails(tmp_path, capsys, src, "timm", "--num-heads", "2", expect=("--unsafe-load", "non-tensor"))


def test_python_objects_in_a_checkpoint_convert_with_unsafe_load(tmp_path, dino_like_with_python_objects):
    src = dino_like_with_python_objects
    dst = convert(tmp_path, src, "timm", "--grid", "4", "4", "--num-heads", "2", "--unsafe-load")
    assert os.path.exists(dst)


def test_heads_not_inferable_from_the_width_are_refused_asking_for_num_heads(tmp_path, capsys):
    ckpt, _ = mae_checkpoint()
    src = saved(ckpt, tmp_path / "mae.pth")
    _fails(tmp_path, capsys, src, expect=("num_heads", "--num-heads", "embed_dim 64"))
