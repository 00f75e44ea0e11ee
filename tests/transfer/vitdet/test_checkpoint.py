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

TOY_CFG = os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py")


def test_read_backbone_arch_returns_the_architecture_recorded_in_a_converted_checkpoint(tmp_path):
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


@pytest.fixture(scope="module")
def loaded_tiny_model(tmp_path_factory):
    """The tiny Mask R-CNN after a ``strict="backbone"`` load of a converted checkpoint (and that file's tensors)."""
    p = str(tmp_path_factory.mktemp("good") / "c.pth")
    sd = _converted_checkpoint(p)
    _, model = _tiny_model()
    StrictDetectionCheckpointer(model, strict="backbone").load(p, checkpointables=[])
    return p, sd, model


def test_a_good_init_checkpoint_loads_every_backbone_tensor_exactly(loaded_tiny_model):
    _, sd, model = loaded_tiny_model
    msd = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(msd[k], v), k


def test_strict_all_loading_also_wants_the_heads(loaded_tiny_model):
    """strict="all" is for evaluation and resuming: a backbone-only file is an error there."""
    p, _, model = loaded_tiny_model
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint: backbone.simfp_2"):
        StrictDetectionCheckpointer(model, strict="all").load(p, checkpointables=[])


@pytest.fixture(scope="module")
def checkpoint_with_tokens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("override")
    p = str(tmp / "c.pth")
    _converted_checkpoint(p, tokens=True)
    return tmp, p


@pytest.fixture(scope="module")
def config_from_checkpoint(checkpoint_with_tokens):
    from transfer.vitdet.train import build_parser, setup_config

    tmp, p = checkpoint_with_tokens
    args = build_parser().parse_args(["--config-file", TOY_CFG, "--init", p, "--output", str(tmp / "o")])
    return setup_config(args)


def test_setup_config_takes_the_backbone_architecture_from_the_init_checkpoint(config_from_checkpoint):
    net = config_from_checkpoint.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads, net.pretrain_img_size, net.use_cls_token) == (64, 2, 2, 128, True)


def test_setup_config_trains_on_cuda_when_available_else_cpu(config_from_checkpoint):
    assert config_from_checkpoint.train.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_config_override_contradicting_the_checkpoint_is_an_error(checkpoint_with_tokens):
    from transfer.vitdet.train import build_parser, setup_config

    _, p = checkpoint_with_tokens
    args = build_parser().parse_args(["--config-file", TOY_CFG, "--init", p, "model.backbone.net.embed_dim=96"])
    with pytest.raises(ValueError, match="embed_dim=96"):
        setup_config(args)


def test_a_checkpoint_save_goes_through_a_temporary_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import pretrain.io

    model = torch.nn.Linear(2, 2)
    ckpt = StrictDetectionCheckpointer(model, save_dir=str(tmp_path), meta={"embed_dim": 2})
    ckpt.save("model_0000001")
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    assert saved["meta"] == {"embed_dim": 2} and torch.equal(saved["model"]["weight"], model.weight.detach())
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    def killed_mid_write(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # as a kill during torch.save

    monkeypatch.setattr(pretrain.io.torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000002")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
