"""The LazyConfigs: paper numbers, schedule scaling, lr and weight decay of the tokens."""

import math
import os

import pytest

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig, instantiate  # noqa: E402

from tests.transfer.vitdet.helpers import (
    CFG_DIR,
)
from transfer.vitdet.backbone import SDPAViT  # noqa: E402


def _group_of(optim, param):
    for g in optim.param_groups:
        if any(p is param for p in g["params"]):
            return g
    raise KeyError("parameter not in optimizer")


@pytest.mark.parametrize("size, dims, lr", [("s", (384, 12, 6), 1e-4), ("b", (768, 12, 12), 3e-4)])
def test_configs_load_and_instantiate(size, dims, lr):
    cfg = LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_12ep.py"))
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads) == dims
    assert list(net.window_block_indexes) == [] and net.window_size == 0 and net.use_rel_pos is False
    assert net.pretrain_img_size == 1024 and net.pretrain_use_cls_token is True and net.drop_path_rate == 0.1
    assert cfg.model.backbone.square_pad == 1024
    assert cfg.train.max_iter == 22128 and cfg.train.amp.enabled is True
    assert list(cfg.lr_multiplier.milestones) == [19667, 21306] and cfg.lr_multiplier.warmup_iters == 250
    assert cfg.optimizer.lr == lr and cfg.optimizer.weight_decay == 0.1
    assert cfg.dataloader.train.total_batch_size == 64
    augs = cfg.dataloader.train.mapper.augmentations
    assert [a._target_.__name__ for a in augs] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert (augs[1].min_scale, augs[1].max_scale, augs[1].target_height, list(augs[2].crop_size)) == (
        0.1,
        2.0,
        1024,
        [1024, 1024],
    )
    assert cfg.dataloader.train.mapper.image_format == "RGB" and cfg.dataloader.train.mapper.recompute_boxes
    assert cfg.dataloader.test.mapper.augmentations[0].max_size == 1024

    sched = instantiate(cfg.lr_multiplier)
    n = cfg.train.max_iter
    assert math.isclose(sched(0.0), 0.001)
    for it, want in [(250, 1.0), (19666, 1.0), (19667, 0.1), (21305, 0.1), (21306, 0.01), (22127, 0.01)]:
        assert math.isclose(sched(it / n), want, rel_tol=1e-6), (it, sched(it / n))

    model = instantiate(cfg.model)
    assert type(model.backbone.net) is SDPAViT
    assert model.backbone.net.pos_embed.shape == (1, 64 * 64 + 1, dims[0])
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    bb = model.backbone.net
    for param, layer_factor, wd in [
        (bb.blocks[11].mlp.fc1.weight, 0.7**1, 0.1),
        (bb.blocks[0].attn.qkv.weight, 0.7**12, 0.1),
        (bb.blocks[5].norm1.weight, 0.7**7, 0.0),
        (bb.patch_embed.proj.weight, 0.7**13, 0.1),
        (bb.pos_embed, 0.7**13, 0.0),
        (model.roi_heads.box_predictor.cls_score.weight, 1.0, 0.1),
    ]:
        g = _group_of(optim, param)
        assert math.isclose(g["lr"], lr * layer_factor, rel_tol=1e-6) and g["weight_decay"] == wd


@pytest.mark.parametrize("size", ["s", "b"])
def test_50ep_configs_scale_schedule(size):
    c12 = LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_12ep.py"))
    c50 = LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_50ep.py"))
    assert c50.train.max_iter == round(22128 * 50 / 12) == 92200
    assert list(c50.lr_multiplier.milestones) == [round(m * 50 / 12) for m in (19667, 21306)]
    assert c50.optimizer.lr == c12.optimizer.lr and c50.model.backbone.net.embed_dim == c12.model.backbone.net.embed_dim
    # loading the 50ep file does not leak into the 12ep one
    assert LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_12ep.py")).train.max_iter == 22128


def test_extra_tokens_get_embedding_lr_and_no_weight_decay():
    cfg = LazyConfig.load(os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py"))
    net = cfg.model.backbone.net
    net.embed_dim, net.depth, net.num_heads, net.use_cls_token, net.num_register_tokens = 64, 2, 2, True, 2
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    lr = cfg.optimizer.lr
    for param in (model.backbone.net.cls_token, model.backbone.net.reg_token, model.backbone.net.pos_embed):
        g = _group_of(optim, param)
        assert math.isclose(g["lr"], lr * 0.7**3, rel_tol=1e-6) and g["weight_decay"] == 0.0
    g = _group_of(optim, model.backbone.net.blocks[1].attn.proj.weight)
    assert math.isclose(g["lr"], lr * 0.7, rel_tol=1e-6) and g["weight_decay"] == 0.1
