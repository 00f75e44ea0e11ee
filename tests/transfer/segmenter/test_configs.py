"""The paper's configs and what the entry derives from them."""

import math
import os

import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmengine.config import Config  # noqa: E402

from tests.transfer.segmenter.helpers import (
    CFG_DIR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TOY_CFG,
)


# the paper's configs
@pytest.mark.parametrize(
    "name,dim,heads", [("segmenter_linear_vit_s_160k.py", 384, 6), ("segmenter_linear_vit_b_160k.py", 768, 12)]
)
def test_paper_configs(name, dim, heads):
    cfg = Config.fromfile(os.path.join(CFG_DIR, name))
    assert cfg.train_cfg.type == "IterBasedTrainLoop"
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_cfg.val_interval == 16000
    assert cfg.default_hooks.checkpoint.interval == 16000
    assert cfg.total_batch_size == 16 and cfg.train_dataloader.batch_size == 16
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == "AdamW" and opt.lr == 3e-5 and opt.weight_decay == 1e-2
    (poly,) = [s for s in cfg.param_scheduler if s.type == "PolyLR"]
    assert poly.power == 0.9 and poly.end == 160000 and not poly.by_epoch
    assert math.isclose(poly.eta_min, 0.1 * opt.lr) and cfg.min_lr_ratio == 0.1
    bb = cfg.model.backbone
    assert bb.type == "VisionTransformer" and bb.patch_bias is True and bb.final_norm is True
    assert bb.with_cls_token and tuple(bb.img_size) == (512, 512) and bb.patch_size == 16
    assert bb.embed_dims == dim and bb.num_heads == heads and bb.num_layers == 12
    assert bb.norm_cfg == dict(type="LN", eps=1e-6) and bb.interpolate_mode == "bicubic" and bb.drop_path_rate == 0.1
    assert bb.out_indices == -1 and bb.init_cfg is None
    head = cfg.model.decode_head
    assert head.type == "FCNHead" and head.num_convs == 0 and head.concat_input is False
    assert head.in_channels == head.channels == dim and head.num_classes == 150 and head.dropout_ratio == 0.0
    pre = cfg.model.data_preprocessor
    assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD and pre.bgr_to_rgb
    assert cfg.val_evaluator.type == "IoUMetric" and cfg.val_evaluator.iou_metrics == ["mIoU"]
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset"
    assert cfg.model.test_cfg.mode == "slide" and tuple(cfg.model.test_cfg.crop_size) == (512, 512)
    assert "VerifyPretrainedBackboneHook" in [h["type"] for h in cfg.custom_hooks]
    # nothing may download
    assert "http" not in cfg.pretty_text


def test_entry_derives_batch_and_eta_min(ref_ckpt, toy_root, monkeypatch, tmp_path):
    from transfer.segmenter import train

    _, path = ref_ckpt
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = train.parse_args(
        [TOY_CFG, "--init", path, "--data-root", toy_root, "--lr", "8e-5", "--launcher", "pytorch"]
        + ["--work-dir", str(tmp_path)]
    )
    cfg, info = train.prepare_config(args)
    assert cfg.train_dataloader.batch_size == 2 and info["total_batch_size"] == 4
    assert math.isclose(cfg.param_scheduler[0].eta_min, 8e-6) and cfg.param_scheduler[0].end == 300
    assert info["num_classes"] == 4 and cfg.model.decode_head.num_classes == 4
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="not divisible"):
        train.prepare_config(args)
