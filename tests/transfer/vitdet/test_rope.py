"""A RoPE backbone (docs/positions.md) through ViTDet: converted checkpoint -> architecture -> toy Mask R-CNN."""

import os

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig, instantiate  # noqa: E402

from tests.support.models import exported_random_rope_vit  # noqa: E402
from tests.transfer.vitdet.helpers import CFG_DIR  # noqa: E402
from transfer.convert.api import convert_checkpoint  # noqa: E402
from transfer.vitdet.checkpoint import (  # noqa: E402
    StrictDetectionCheckpointer,
    apply_backbone_arch,
    backbone_meta,
    check_backbone_arch,
    read_backbone_arch,
)


@pytest.fixture(scope="module")
def rope_d2(tmp_path_factory):
    d = tmp_path_factory.mktemp("rope_d2")
    model, _ = exported_random_rope_vit(d, embed_dim=64, img_size=128, noise=0.05, rope_base=100.0)
    dst = d / "d2.pth"
    convert_checkpoint(d / "backbone.pth", dst, "detectron2", grid=(8, 8), quiet=True)
    return model, str(dst)


def test_read_backbone_arch_returns_the_rope_arguments(rope_d2):
    _, path = rope_d2
    arch = read_backbone_arch(path)
    assert arch["use_rope"] is True and arch["use_abs_pos"] is False
    assert (arch["rope_base"], arch["rope_rule"], arch["rope_coords"]) == (100.0, "axial", "grid")
    assert arch["grid"] == [8, 8] and arch["pretrain_use_cls_token"] is False


def test_the_toy_mask_rcnn_builds_loads_and_runs_with_the_rope_backbone(rope_d2):
    model, path = rope_d2
    cfg = LazyConfig.load(os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py"))
    arch = read_backbone_arch(path)
    apply_backbone_arch(cfg, arch)
    check_backbone_arch(cfg, arch)
    det = instantiate(cfg.model)
    StrictDetectionCheckpointer(det, strict="backbone").load(path, checkpointables=[])
    det.eval()
    net = det.backbone.net
    assert net.pos_embed is None and net.use_rope
    for h, w in ((128, 128), (96, 160)):  # the input's integer grid at any size
        img = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            feat = net(img)["last_feat"].flatten(2).transpose(1, 2)
            seq, grid = model.prepare_tokens(img)
            x, angles = seq[:, 1:], model.attention_angles(grid)
            for blk in model.blocks:
                x = blk(x, angles, 0)
        assert torch.allclose(feat, x, atol=1e-4)
    with torch.no_grad():
        out = det([{"image": torch.rand(3, 128, 128) * 255, "height": 128, "width": 128}])
    assert "instances" in out[0]
    assert backbone_meta(cfg)["rope"] == {"base": 100.0, "rule": "axial", "coords": "grid"}
