"""DINOv3 checkpoints through both transfers: the paper-size configs hold a converted DINOv3 ViT-S/B exactly, and
a DINOv3 ViT-S/16 fine-tunes through the toy ViTDet and Segmenter configs."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

from tests.support.paths import REPO
from tests.test_end_to_end import run
from toydata import AdeSpec, CocoSpec, ImagesSpec, ToySpec, ensure_toy_data
from transfer.convert.api import convert_checkpoint

pytest.importorskip("detectron2")
pytest.importorskip("mmseg")

SIZES = {"s": (384, 6), "b": (768, 12)}


def _timm_dinov3(size: str, depth: int = 2):
    """A random timm-layout DINOv3 ViT-S/B (``vit_*_patch16_dinov3_qkvb``) with visible biases and LayerScale."""
    import timm

    torch.manual_seed(0)
    name = {"s": "vit_small_patch16_dinov3_qkvb", "b": "vit_base_patch16_dinov3_qkvb"}[size]
    model = timm.create_model(name, pretrained=False, num_classes=0, depth=depth).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("q_bias", "v_bias")):
                p.normal_(0, 0.1)
            elif n.endswith(("gamma_1", "gamma_2")):
                p.uniform_(0.3, 1.5)
    return model


@pytest.fixture(scope="module", params=sorted(SIZES))
def dinov3_release(request, tmp_path_factory):
    """``(size, timm model, path of its state dict)`` for a 2-block DINOv3 ViT-S and ViT-B in timm's layout."""
    model = _timm_dinov3(request.param)
    path = tmp_path_factory.mktemp("dinov3") / f"dinov3_vit{request.param}.pth"
    torch.save(model.state_dict(), path)
    return request.param, model, path


def test_vitdet_dinov3_config_holds_a_converted_release_exactly(dinov3_release, tmp_path):
    from detectron2.config import LazyConfig, instantiate

    from transfer.vitdet.checkpoint import apply_backbone_arch, check_backbone_arch, read_backbone_arch

    size, model, src = dinov3_release
    dst = tmp_path / "d2.pth"
    convert_checkpoint(src, dst, "detectron2", grid=(4, 4), keep_tokens=True, quiet=True)
    cfg = LazyConfig.load(os.path.join(REPO, f"configs/vitdet/mask_rcnn_dinov3_vit_{size}_12ep.py"))
    net = cfg.model.backbone.net
    assert (net.rope_rule, net.rope_coords, net.rope_base, net.num_register_tokens) == ("dinov3", "normalized", 100, 4)
    assert net.norm_layer.keywords["eps"] == 1e-5 and net.use_cls_token and not net.use_abs_pos
    arch = read_backbone_arch(str(dst))
    arch["depth"] = net.depth = 2  # the fixture release has 2 blocks; everything else must already match
    arch.update(pretrain_img_size=net.pretrain_img_size)
    check_backbone_arch(cfg, arch, "the converted DINOv3 file")
    apply_backbone_arch(cfg, read_backbone_arch(str(dst)))
    net.img_size = net.pretrain_img_size = 64
    vit = instantiate(net).eval()
    sd = {k[len("backbone.net.") :]: v for k, v in torch.load(dst, weights_only=True)["model"].items()}
    vit.load_state_dict(sd, strict=True)
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = vit(img)["last_feat"].flatten(2).transpose(1, 2)
        x, rot = model._pos_embed(model.patch_embed(img))
        for blk in model.blocks:
            x = blk(x, rope=rot)
    assert float((ours - x[:, 5:]).abs().max()) < 1e-4 * max(1.0, float(x.abs().max()))


def test_segmenter_dinov3_config_holds_a_converted_release_exactly(dinov3_release, tmp_path):
    from mmengine.config import Config
    from mmseg.registry import MODELS

    import transfer.segmenter.integration  # noqa: F401  (registers RoPEVisionTransformer)

    size, model, src = dinov3_release
    dst = tmp_path / "mmseg.pth"
    convert_checkpoint(src, dst, "mmseg", grid=(4, 6), quiet=True)
    cfg = Config.fromfile(os.path.join(REPO, f"configs/ade20k/segmenter_linear_dinov3_vit_{size}_160k.py"))
    b = dict(cfg.model.backbone)
    assert b["type"] == "RoPEVisionTransformer" and b["norm_cfg"]["eps"] == 1e-5 and b["num_register_tokens"] == 4
    assert (b["embed_dims"], b["num_heads"]) == SIZES[size]
    b.update(img_size=(64, 96), num_layers=2, init_cfg=None, drop_path_rate=0.0)
    vit = MODELS.build(b)
    vit.eval()
    vit.load_state_dict(torch.load(dst, weights_only=True)["state_dict"], strict=True)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = vit(img)[-1].flatten(2).transpose(1, 2)
        ref = model.forward_features(img)[:, 5:]
    assert float((ours - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))


@pytest.mark.slow
def test_a_dinov3_vit_s_fine_tunes_through_toy_vitdet_and_segmenter(tmp_path):
    """A whole DINOv3 ViT-S/16 (12 blocks, RoPE, 4 storage tokens; timm's layout, which reproduces the official
    model exactly: test_official.py) converts and fine-tunes through the toy ViTDet and Segmenter configs. (The
    official-layout fixture's conversion into both backbones is checked in test_official.py.)"""
    spec = ToySpec(images=ImagesSpec(num=4, size=96), coco=CocoSpec(8, 4, size=128), ade=AdeSpec(8, 4, size=96))
    toy = ensure_toy_data(str(tmp_path / "toy"), spec)
    src = tmp_path / "dinov3_vits16.pth"
    torch.save(_timm_dinov3("s", depth=12).state_dict(), src)
    common = ["--src", str(src)]
    d2, mmseg = tmp_path / "d2.pth", tmp_path / "mmseg.pth"
    log = run([sys.executable, "tools/convert_ckpt.py", *common, "--dst", str(d2), "--target", "detectron2",
               "--keep-tokens", "--grid", "8", "8"])  # fmt: skip
    assert "format: dinov3" in log and "OK" in log
    run(
        [sys.executable, "tools/convert_ckpt.py", *common, "--dst", str(mmseg), "--target", "mmseg", "--grid", "4", "4"]
    )
    det_out = tmp_path / "vitdet"
    log = run(
        ["bash", "tools/train_vitdet.sh", "configs/vitdet/mask_rcnn_vit_tiny_toy.py", str(d2), "train.max_iter=4",
         "train.checkpointer.period=4"],
        env={"TOY_COCO_ROOT": toy["coco"], "OUTPUT_DIR": str(det_out), "GPUS": "1"},
    )  # fmt: skip
    assert "ViTDet result: box AP" in log
    assert "bbox" in json.dumps(json.load(open(det_out / "metrics_final.json")))
    seg_dir = tmp_path / "ade"
    run(
        ["bash", "tools/train_ade.sh", "configs/ade20k/segmenter_linear_vit_tiny_toy.py", str(mmseg), "--work-dir",
         str(seg_dir), "train_cfg.max_iters=4", "train_cfg.val_interval=4"],
        env={"TOY_ADE_ROOT": toy["ade"], "GPUS": "1"},
    )  # fmt: skip
    finals = [os.path.join(d, f) for d, _, files in os.walk(seg_dir) for f in files if f == "metrics_final.json"]
    assert len(finals) == 1 and math.isfinite(float(json.load(open(finals[0]))["mIoU"]))
