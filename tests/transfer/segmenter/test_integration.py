"""Checkpoint integration: exact loading, the converter's output, loud failures."""

import os

import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmengine.config import Config  # noqa: E402

from tests.transfer.segmenter.helpers import (
    CFG_DIR,
    DEPTH,
    DIM,
    GRID,
    HEADS,
    PATCH,
    TOY_CFG,
    _build_model,
    save_converted,
)
from transfer.segmenter import integration  # noqa: E402
from transfer.segmenter.integration import CheckpointLoadError  # noqa: E402

# checkpoint integration


@pytest.fixture(scope="module")
def applied(ref_ckpt):
    """The toy config after ``apply_checkpoint_to_config`` with the reference checkpoint, and the returned arch."""
    _, path = ref_ckpt
    cfg = Config.fromfile(TOY_CFG)
    return cfg, integration.apply_checkpoint_to_config(cfg, path)


@pytest.fixture(scope="module")
def toy_model(applied):
    """The model built from the applied toy config (its backbone initialised from the file)."""
    cfg, _ = applied
    return _build_model(cfg)


@pytest.fixture(scope="module")
def backbone_outputs(ref_ckpt, toy_model):
    """The last feature map of the loaded backbone and of the reference ViT on one batch."""
    ref, _ = ref_ckpt
    toy_model.backbone.eval()
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        return toy_model.backbone(x)[-1], ref(x)[-1]


def test_apply_checkpoint_returns_the_checkpoints_architecture(applied):
    _, arch = applied
    assert arch["embed_dims"] == DIM and arch["num_layers"] == DEPTH and arch["grid"] == (GRID, GRID)


def test_apply_checkpoint_sizes_the_backbone_to_the_checkpoint(applied):
    cfg, _ = applied
    assert cfg.model.backbone.embed_dims == DIM and cfg.model.backbone.num_heads == HEADS
    assert tuple(cfg.model.backbone.img_size) == (GRID * PATCH, GRID * PATCH)


def test_apply_checkpoint_sizes_the_head_to_the_backbone_width(applied):
    cfg, _ = applied
    assert cfg.model.decode_head.in_channels == DIM and cfg.model.decode_head.channels == DIM


def test_apply_checkpoint_points_the_backbone_init_cfg_at_the_file(ref_ckpt, applied):
    _, path = ref_ckpt
    cfg, _ = applied
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=os.path.abspath(path))


def test_after_init_weights_every_backbone_tensor_equals_the_files(ref_ckpt, toy_model):
    """The fresh init differs from the file; verification counts every tensor equal to the file's."""
    ref, path = ref_ckpt
    assert integration.verify_backbone_loaded(toy_model.backbone, path) == len(ref.state_dict())


def test_loaded_backbone_outputs_a_feature_map_at_the_checkpoints_grid(backbone_outputs):
    ours, _ = backbone_outputs
    assert ours.shape == (2, DIM, GRID, GRID)


def test_loaded_backbone_reproduces_the_reference_vit(backbone_outputs):
    ours, theirs = backbone_outputs
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_converted_timm_vit_in_the_toy_config_reproduces_the_timm_patch_features(tmp_path):
    """timm ViT -> tools/convert_ckpt.py's mmseg target -> our config: same patch features as the timm model."""
    timm = pytest.importorskip("timm")
    try:
        from transfer.convert import convert_checkpoint
    except ImportError:
        pytest.skip("transfer.convert is not available")
    torch.manual_seed(3)
    src = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, embed_dim=48, depth=2, num_heads=3, num_classes=0
    ).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    dst = str(tmp_path / "mmseg.pth")
    convert_checkpoint(tmp_path / "timm.pth", dst, "mmseg", grid=(4, 4), quiet=True, src_format="timm", num_heads=3)
    cfg = Config.fromfile(TOY_CFG)
    integration.apply_checkpoint_to_config(cfg, dst)
    model = _build_model(cfg)
    integration.verify_backbone_loaded(model.backbone, dst)
    model.backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)[-1].flatten(2).transpose(1, 2)
        theirs = src.forward_features(x)[:, 1:]
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_a_renamed_key_fails_verification_naming_the_file_key_and_the_parameter_left_at_init(ref_ckpt, tmp_path):
    """mmseg itself loads with strict=False and says nothing."""
    ref, _ = ref_ckpt
    bad = save_converted(ref, str(tmp_path / "broken.pth"), rename=("layers.1.ln2.weight", "layers.1.norm2.weight"))
    cfg = Config.fromfile(TOY_CFG)
    integration.apply_checkpoint_to_config(cfg, bad)
    model = _build_model(cfg)
    with pytest.raises(CheckpointLoadError) as err:
        integration.verify_backbone_loaded(model.backbone, bad)
    msg = str(err.value)
    assert "layers.1.norm2.weight" in msg  # file key that was dropped
    assert "layers.1.ln2.weight" in msg  # backbone parameter left at its fresh init


def test_a_config_without_patch_bias_is_refused_for_a_checkpoint_with_one(ref_ckpt):
    _, path = ref_ckpt
    cfg = Config.fromfile(TOY_CFG)
    cfg.model.backbone.patch_bias = False
    with pytest.raises(CheckpointLoadError, match="patch_bias"):
        integration.apply_checkpoint_to_config(cfg, path)


def test_a_paper_config_refuses_a_checkpoint_of_another_size_instead_of_adapting(ref_ckpt):
    """A tiny checkpoint does not fit ViT-S at 512."""
    _, path = ref_ckpt
    cfg = Config.fromfile(os.path.join(CFG_DIR, "segmenter_linear_vit_s_160k.py"))
    with pytest.raises(CheckpointLoadError, match="embed_dims"):
        integration.apply_checkpoint_to_config(cfg, path)
