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
def test_toy_config_loads_checkpoint_exactly(ref_ckpt):
    ref, path = ref_ckpt
    cfg = Config.fromfile(TOY_CFG)
    arch = integration.apply_checkpoint_to_config(cfg, path)
    assert arch["embed_dims"] == DIM and arch["num_layers"] == DEPTH and arch["grid"] == (GRID, GRID)
    assert cfg.model.backbone.embed_dims == DIM and cfg.model.backbone.num_heads == HEADS
    assert tuple(cfg.model.backbone.img_size) == (GRID * PATCH, GRID * PATCH)
    assert cfg.model.decode_head.in_channels == DIM and cfg.model.decode_head.channels == DIM
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=os.path.abspath(path))
    model = _build_model(cfg)
    # the fresh init differs from the file; after init_weights every tensor must equal the file's
    assert integration.verify_backbone_loaded(model.backbone, path) == len(ref.state_dict())
    model.backbone.eval()
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        ours = model.backbone(x)[-1]
        theirs = ref(x)[-1]
    assert ours.shape == (2, DIM, GRID, GRID)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_real_converter_output_loads_into_toy_config(tmp_path):
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


def test_broken_checkpoint_fails_loudly_naming_the_key(ref_ckpt, tmp_path):
    ref, _ = ref_ckpt
    bad = save_converted(ref, str(tmp_path / "broken.pth"), rename=("layers.1.ln2.weight", "layers.1.norm2.weight"))
    cfg = Config.fromfile(TOY_CFG)
    integration.apply_checkpoint_to_config(cfg, bad)
    model = _build_model(cfg)  # mmseg itself loads with strict=False and says nothing
    with pytest.raises(CheckpointLoadError) as err:
        integration.verify_backbone_loaded(model.backbone, bad)
    msg = str(err.value)
    assert "layers.1.norm2.weight" in msg  # file key that was dropped
    assert "layers.1.ln2.weight" in msg  # backbone parameter left at its fresh init


def test_patch_bias_trap_and_strict_config_mismatch(ref_ckpt):
    _, path = ref_ckpt
    cfg = Config.fromfile(TOY_CFG)
    cfg.model.backbone.patch_bias = False
    with pytest.raises(CheckpointLoadError, match="patch_bias"):
        integration.apply_checkpoint_to_config(cfg, path)
    # the paper's configs check instead of adapting: a tiny checkpoint does not fit ViT-S at 512
    cfg = Config.fromfile(os.path.join(CFG_DIR, "segmenter_linear_vit_s_160k.py"))
    with pytest.raises(CheckpointLoadError, match="embed_dims"):
        integration.apply_checkpoint_to_config(cfg, path)
