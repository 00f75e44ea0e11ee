"""The entry point, format detection, the Python API and the frameworks' own loaders."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from pretrain.export import export_backbone
from tests.support.paths import REPO
from tests.transfer.convert.references import (
    HEADS,
    TOL,
    D,
    convert,
    dinov2_checkpoint,
    image,
    mae_checkpoint,
    max_diff,
    needs_d2,
    needs_mmseg,
    ours_model,
    ours_reference,
)
from transfer.convert.readers import ReadOptions, read_checkpoint
from transfer.vitdet.plain_vit import plain_vit_kwargs


def test_cli_script_subprocess(tmp_path):
    """The thin tools/ entry point works from any directory and exits non-zero on bad input."""
    src = tmp_path / "junk.pth"
    src.write_bytes(os.urandom(64))
    dst = tmp_path / "out.pth"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "convert_ckpt.py"),
            "--src",
            str(src),
            "--dst",
            str(dst),
            "--target",
            "mmseg",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode != 0 and "not a PyTorch checkpoint" in proc.stderr
    assert not dst.exists()


def test_format_detection_wrappers_and_prefixes():
    from transfer.convert.readers import detect_format, unwrap

    _, flat = dinov2_checkpoint(chunks=1)
    assert detect_format(unwrap(flat)) == "dinov2"  # hub state dict: register_tokens, (1, D) mask_token
    _, mae = mae_checkpoint()
    blocks = {k: v for k, v in mae.items() if not k.startswith(("decoder", "mask_token"))}
    assert detect_format(unwrap(dict(blocks))) == "timm"
    dino = {  # DINO/iBOT release: student behind DDP, teacher preferred, heads dropped
        "student": {"module.backbone." + k: torch.zeros_like(v) for k, v in blocks.items()},
        "teacher": {**{"backbone." + k: v for k, v in blocks.items()}, "head.mlp.0.weight": torch.zeros(8, D)},
        "epoch": 100,
    }
    u = unwrap(dino)
    assert u.wrappers == ["teacher"] and u.prefixes == {"backbone."} and detect_format(u) == "mae"
    c, _ = read_checkpoint(dino, ReadOptions(num_heads=2))
    assert torch.equal(c.state["blocks.1.mlp.fc2.weight"], blocks["blocks.1.mlp.fc2.weight"])
    assert ("head.mlp.0.weight", "projection/classification head: not part of the backbone") in c.dropped


@needs_d2
def test_python_api(tmp_path):
    from transfer.convert import ConversionError, convert_checkpoint

    model = ours_model(field=True)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    s = convert_checkpoint(src, tmp_path / "d2.pth", "detectron2", grid=(4, 4), quiet=True)
    assert s["parity"].ok and s["meta"]["grid"] == [4, 4] and (tmp_path / "d2.pth").exists()
    with pytest.raises(ConversionError, match="square grid"):
        convert_checkpoint(src, tmp_path / "bad.pth", "detectron2", grid=(4, 6), quiet=True)
    assert not (tmp_path / "bad.pth").exists()


@needs_d2
@needs_mmseg
def test_frameworks_own_loaders_read_the_files(tmp_path):
    """The files load through the loaders the protocols use: detectron2's DetectionCheckpointer (exact
    ``backbone.net.*`` keys, no heuristics) and MMSeg's ``init_cfg=Pretrained`` (reads ``state_dict``)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import ViT
    from mmseg.models.backbones import VisionTransformer

    model = ours_model(field=True, ls=True)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    img = image((4, 4))
    d2 = convert(tmp_path, src, "detectron2", "--grid", "4", "4")
    net = ViT(**plain_vit_kwargs(img_size=64, patch_size=16, embed_dim=D, depth=2, num_heads=HEADS)).eval()
    wrapper = nn.Module()
    wrapper.backbone = nn.Module()
    wrapper.backbone.net = net
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    DetectionCheckpointer(wrapper).load(d2)
    assert all(not torch.equal(before[k], v) for k, v in wrapper.state_dict().items() if "norm" not in k)
    with torch.no_grad():
        got = net(img)["last_feat"].flatten(2).transpose(1, 2)
    assert max_diff(got, ours_reference(model, img, False, False, False)) <= TOL

    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4")
    vit = VisionTransformer(
        img_size=(64, 64),
        embed_dims=D,
        num_layers=2,
        num_heads=HEADS,
        final_norm=True,
        patch_bias=True,
        norm_cfg=dict(type="LN", eps=1e-6),
        init_cfg=dict(type="Pretrained", checkpoint=mm),
    )
    vit.init_weights()
    vit.eval()
    with torch.no_grad():
        got = vit(img)[-1].flatten(2).transpose(1, 2)
    assert max_diff(got, ours_reference(model, img, True, False, True)) <= TOL
