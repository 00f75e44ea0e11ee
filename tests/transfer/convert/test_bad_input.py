"""Bad input: non-zero exit, a message naming the problem, no output file."""

from __future__ import annotations

import argparse
import os

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


def test_bad_non_checkpoint_file(tmp_path, capsys):
    src = tmp_path / "notes.txt"
    src.write_text("this is not a checkpoint\n")
    _fails(tmp_path, capsys, src, expect=("not a PyTorch checkpoint",))
    _fails(tmp_path, capsys, tmp_path / "missing.pth", expect=("not found",))


def test_bad_unknown_layout(tmp_path, capsys):
    src = tmp_path / "weird.pth"
    torch.save({"encoder_layers": {"w": torch.zeros(3)}, "epoch": 3}, src)
    _fails(tmp_path, capsys, src, expect=("unknown checkpoint layout", "epoch"))
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, src)
    _fails(tmp_path, capsys, src, expect=("unknown checkpoint layout", "conv1.weight"))
    torch.save([torch.zeros(2)], src)
    _fails(tmp_path, capsys, src, expect=("unknown checkpoint layout", "list"))


def test_bad_missing_tensor(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.pop("blocks.1.mlp.fc2.weight"))
    _fails(tmp_path, capsys, src, expect=("missing tensor", "blocks.1.mlp.fc2.weight"))
    src = _exported_with(tmp_path, lambda sd: sd.pop("pos_field.field"))
    _fails(tmp_path, capsys, src, expect=("missing position embedding", "pos_field.field"))


def test_bad_wrong_shape(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.__setitem__("blocks.0.attn.proj.weight", torch.zeros(D, D + 1)))
    _fails(tmp_path, capsys, src, expect=("wrong shape", "blocks.0.attn.proj.weight", "(64, 65)"))


def test_bad_unknown_key(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.__setitem__("blocks.0.attn.q_norm.weight", torch.ones(32)))
    _fails(tmp_path, capsys, src, expect=("unknown key", "blocks.0.attn.q_norm.weight"))


def test_bad_registers_for_mmseg_without_drop(tmp_path, capsys):
    model = ours_model(field=True, regs=2)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    _fails(tmp_path, capsys, src, "mmseg", expect=("2 register tokens", "--drop-registers"))
    _fails(tmp_path, capsys, src, "detectron2", expect=("register tokens", "--keep-tokens"))


def test_bad_python_objects_need_unsafe_load(tmp_path, capsys):
    ckpt, _ = mae_checkpoint()
    ckpt["args"] = argparse.Namespace(arch="vit_small")  # as in old DINO/iBOT checkpoints
    src = saved(ckpt, tmp_path / "dino_like.pth")
    _fails(tmp_path, capsys, src, "timm", "--num-heads", "2", expect=("--unsafe-load", "non-tensor"))
    dst = convert(tmp_path, src, "timm", "--grid", "4", "4", "--num-heads", "2", "--unsafe-load")
    assert os.path.exists(dst)


def test_bad_heads_not_inferable(tmp_path, capsys):
    ckpt, _ = mae_checkpoint()
    src = saved(ckpt, tmp_path / "mae.pth")
    _fails(tmp_path, capsys, src, expect=("num_heads", "--num-heads", "embed_dim 64"))
