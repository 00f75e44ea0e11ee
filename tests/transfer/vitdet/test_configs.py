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


PAPER = {"s": ((384, 12, 6), 1e-4), "b": ((768, 12, 12), 3e-4)}  # size: ((embed_dim, depth, heads), lr)


def _paper_cfg(size, epochs=12):
    return LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_{epochs}ep.py"))


@pytest.fixture(scope="module", params=list(PAPER))
def paper(request):
    """``(size, dims, lr, cfg)`` of a 12-epoch paper config."""
    dims, lr = PAPER[request.param]
    return request.param, dims, lr, _paper_cfg(request.param)


@pytest.fixture(scope="module")
def paper_model_and_optim(paper):
    """The instantiated model of a 12-epoch paper config and its optimizer (on a config of its own)."""
    size, _, _, _ = paper
    cfg = _paper_cfg(size)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    return model, instantiate(cfg.optimizer)


def test_paper_backbone_has_the_size_of_the_named_vit(paper):
    _, dims, _, cfg = paper
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads) == dims


def test_paper_backbone_is_plain_without_windows_or_relative_positions(paper):
    net = paper[3].model.backbone.net
    assert list(net.window_block_indexes) == [] and net.window_size == 0 and net.use_rel_pos is False


def test_paper_backbone_pretrained_at_1024_with_a_cls_slot_and_drop_path_0_1(paper):
    net = paper[3].model.backbone.net
    assert net.pretrain_img_size == 1024 and net.pretrain_use_cls_token is True and net.drop_path_rate == 0.1


def test_paper_backbone_pads_images_to_a_1024_square(paper):
    assert paper[3].model.backbone.square_pad == 1024


def test_paper_training_runs_22128_iterations_with_amp(paper):
    cfg = paper[3]
    assert cfg.train.max_iter == 22128 and cfg.train.amp.enabled is True


def test_paper_schedule_has_the_papers_milestones_and_warmup(paper):
    cfg = paper[3]
    assert list(cfg.lr_multiplier.milestones) == [19667, 21306] and cfg.lr_multiplier.warmup_iters == 250


def test_paper_optimizer_has_the_papers_lr_and_weight_decay(paper):
    _, _, lr, cfg = paper
    assert cfg.optimizer.lr == lr and cfg.optimizer.weight_decay == 0.1


def test_paper_total_batch_size_is_64(paper):
    assert paper[3].dataloader.train.total_batch_size == 64


def test_paper_train_augmentation_is_flip_resize_scale_fixed_size_crop(paper):
    augs = paper[3].dataloader.train.mapper.augmentations
    assert [a._target_.__name__ for a in augs] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]


def test_paper_train_augmentation_is_large_scale_jitter_at_1024(paper):
    augs = paper[3].dataloader.train.mapper.augmentations
    assert (augs[1].min_scale, augs[1].max_scale, augs[1].target_height, list(augs[2].crop_size)) == (
        0.1,
        2.0,
        1024,
        [1024, 1024],
    )


def test_paper_train_mapper_reads_rgb_and_recomputes_boxes_from_masks(paper):
    mapper = paper[3].dataloader.train.mapper
    assert mapper.image_format == "RGB" and mapper.recompute_boxes


def test_paper_test_mapper_resizes_to_1024(paper):
    assert paper[3].dataloader.test.mapper.augmentations[0].max_size == 1024


def test_paper_schedule_warms_up_from_a_thousandth(paper):
    sched = instantiate(paper[3].lr_multiplier)
    assert math.isclose(sched(0.0), 0.001)


def test_paper_schedule_steps_down_tenfold_at_each_milestone(paper):
    cfg = paper[3]
    sched = instantiate(cfg.lr_multiplier)
    n = cfg.train.max_iter
    for it, want in [(250, 1.0), (19666, 1.0), (19667, 0.1), (21305, 0.1), (21306, 0.01), (22127, 0.01)]:
        assert math.isclose(sched(it / n), want, rel_tol=1e-6), (it, sched(it / n))


def test_paper_model_uses_our_sdpa_backbone(paper_model_and_optim):
    model, _ = paper_model_and_optim
    assert type(model.backbone.net) is SDPAViT


def test_paper_model_pos_embed_covers_a_64x64_grid_plus_cls(paper, paper_model_and_optim):
    _, dims, _, _ = paper
    model, _ = paper_model_and_optim
    assert model.backbone.net.pos_embed.shape == (1, 64 * 64 + 1, dims[0])


def _layer_table(model):
    """``(param, lr factor, weight decay)``: layer decay 0.7 from the top (12 blocks), none on norms and pos_embed."""
    bb = model.backbone.net
    return [
        (bb.blocks[11].mlp.fc1.weight, 0.7**1, 0.1),
        (bb.blocks[0].attn.qkv.weight, 0.7**12, 0.1),
        (bb.blocks[5].norm1.weight, 0.7**7, 0.0),
        (bb.patch_embed.proj.weight, 0.7**13, 0.1),
        (bb.pos_embed, 0.7**13, 0.0),
        (model.roi_heads.box_predictor.cls_score.weight, 1.0, 0.1),
    ]


def test_paper_optimizer_decays_the_lr_by_0_7_per_layer_from_the_top(paper, paper_model_and_optim):
    _, _, lr, _ = paper
    model, optim = paper_model_and_optim
    for param, layer_factor, _ in _layer_table(model):
        assert math.isclose(_group_of(optim, param)["lr"], lr * layer_factor, rel_tol=1e-6)


def test_paper_optimizer_exempts_norms_and_pos_embed_from_weight_decay(paper_model_and_optim):
    model, optim = paper_model_and_optim
    for param, _, wd in _layer_table(model):
        assert _group_of(optim, param)["weight_decay"] == wd


@pytest.fixture(scope="module", params=list(PAPER))
def c12_and_c50(request):
    return _paper_cfg(request.param), _paper_cfg(request.param, 50), request.param


def test_50ep_config_scales_max_iter_by_50_over_12(c12_and_c50):
    _, c50, _ = c12_and_c50
    assert c50.train.max_iter == round(22128 * 50 / 12) == 92200


def test_50ep_config_scales_the_milestones_by_50_over_12(c12_and_c50):
    _, c50, _ = c12_and_c50
    assert list(c50.lr_multiplier.milestones) == [round(m * 50 / 12) for m in (19667, 21306)]


def test_50ep_config_keeps_the_12ep_lr_and_model(c12_and_c50):
    c12, c50, _ = c12_and_c50
    assert c50.optimizer.lr == c12.optimizer.lr and c50.model.backbone.net.embed_dim == c12.model.backbone.net.embed_dim


def test_loading_the_50ep_config_does_not_leak_into_the_12ep_one(c12_and_c50):
    _, _, size = c12_and_c50
    assert _paper_cfg(size).train.max_iter == 22128


@pytest.fixture(scope="module")
def toy_with_tokens():
    """The toy config with a CLS token and 2 registers (2 blocks): its model, optimizer and base lr."""
    cfg = LazyConfig.load(os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py"))
    net = cfg.model.backbone.net
    net.embed_dim, net.depth, net.num_heads, net.use_cls_token, net.num_register_tokens = 64, 2, 2, True, 2
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    return model, instantiate(cfg.optimizer), cfg.optimizer.lr


def _embedding_params(model):
    net = model.backbone.net
    return (net.cls_token, net.reg_token, net.pos_embed)


def test_extra_tokens_get_the_embedding_layers_lr(toy_with_tokens):
    model, optim, lr = toy_with_tokens
    for param in _embedding_params(model):
        assert math.isclose(_group_of(optim, param)["lr"], lr * 0.7**3, rel_tol=1e-6)


def test_extra_tokens_get_no_weight_decay(toy_with_tokens):
    model, optim, _ = toy_with_tokens
    for param in _embedding_params(model):
        assert _group_of(optim, param)["weight_decay"] == 0.0


def test_with_extra_tokens_a_last_block_weight_keeps_its_layer_lr_and_weight_decay(toy_with_tokens):
    model, optim, lr = toy_with_tokens
    g = _group_of(optim, model.backbone.net.blocks[1].attn.proj.weight)
    assert math.isclose(g["lr"], lr * 0.7, rel_tol=1e-6) and g["weight_decay"] == 0.1
