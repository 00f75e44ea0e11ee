"""Checkpoint loading: the architecture read from the file, mismatches named, exact loading."""

import os

import pytest
import torch

pytest.importorskip("detectron2")


from tests.transfer.vitdet.helpers import CFG_DIR, _converted_checkpoint, _tiny_model
from transfer.vitdet.checkpoint import (  # noqa: E402
    CheckpointMismatchError,
    StrictDetectionCheckpointer,
    read_backbone_arch,
)


def test_read_backbone_arch(tmp_path):
    p = str(tmp_path / "c.pth")
    _converted_checkpoint(p, tokens=True)
    arch = read_backbone_arch(p)
    assert arch == {
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 2,
        "patch_size": 16,
        "pretrain_img_size": 128,
        "pretrain_use_cls_token": True,
        "use_cls_token": True,
        "num_register_tokens": 0,
        "mlp_ratio": 4,
        "qkv_bias": True,
        "grid": [8, 8],
    }


@pytest.mark.parametrize(
    "edit, key, what",
    [
        ("drop", "backbone.net.blocks.1.attn.qkv.weight", "missing"),
        ("shape", "backbone.net.pos_embed", "wrong shape"),
        ("extra", "backbone.net.blocks.0.ls1.gamma", "not in the model"),
    ],
)
def test_init_checkpoint_mismatch_fails_naming_the_key(tmp_path, edit, key, what):
    p = str(tmp_path / "c.pth")
    sd = _converted_checkpoint(p)
    if edit == "drop":
        del sd[key]
    elif edit == "shape":
        sd[key] = torch.zeros(1, 50, 64)
    else:
        sd[key] = torch.ones(64)
    torch.save({"model": sd}, p)
    _, model = _tiny_model()
    ckpt = StrictDetectionCheckpointer(model, strict="backbone")
    with pytest.raises(CheckpointMismatchError, match=what) as e:
        ckpt.load(p, checkpointables=[])
    assert key in str(e.value)


def test_good_init_checkpoint_loads_exactly(tmp_path):
    p = str(tmp_path / "c.pth")
    sd = _converted_checkpoint(p)
    _, model = _tiny_model()
    StrictDetectionCheckpointer(model, strict="backbone").load(p, checkpointables=[])
    msd = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(msd[k], v), k
    # strict="all" (evaluation / resume) also wants the heads
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint: backbone.simfp_2"):
        StrictDetectionCheckpointer(model, strict="all").load(p, checkpointables=[])


def test_config_override_contradicting_checkpoint_is_an_error(tmp_path):
    from transfer.vitdet.train import build_parser, setup_config

    p = str(tmp_path / "c.pth")
    _converted_checkpoint(p, tokens=True)
    cfg_file = os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py")
    args = build_parser().parse_args(["--config-file", cfg_file, "--init", p, "--output", str(tmp_path / "o")])
    cfg = setup_config(args)
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads, net.pretrain_img_size, net.use_cls_token) == (64, 2, 2, 128, True)
    assert cfg.train.device == ("cuda" if torch.cuda.is_available() else "cpu")
    args = build_parser().parse_args(["--config-file", cfg_file, "--init", p, "model.backbone.net.embed_dim=96"])
    with pytest.raises(ValueError, match="embed_dim=96"):
        setup_config(args)
