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

PAPER = {"segmenter_linear_vit_s_160k.py": (384, 6), "segmenter_linear_vit_b_160k.py": (768, 12)}  # dim, heads


@pytest.fixture(scope="module", params=list(PAPER), ids=["vit_s", "vit_b"])
def paper(request):
    """``(cfg, dim, heads)`` of one of the paper's configs."""
    return Config.fromfile(os.path.join(CFG_DIR, request.param)), *PAPER[request.param]


def test_paper_config_trains_160k_iterations_validating_every_16k(paper):
    cfg, _, _ = paper
    assert cfg.train_cfg.type == "IterBasedTrainLoop"
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_cfg.val_interval == 16000


def test_paper_config_checkpoints_every_16k_iterations(paper):
    cfg, _, _ = paper
    assert cfg.default_hooks.checkpoint.interval == 16000


def test_paper_config_uses_a_total_batch_of_16(paper):
    cfg, _, _ = paper
    assert cfg.total_batch_size == 16 and cfg.train_dataloader.batch_size == 16


def test_paper_config_optimizer_is_adamw_with_the_papers_lr_and_weight_decay(paper):
    cfg, _, _ = paper
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == "AdamW" and opt.lr == 3e-5 and opt.weight_decay == 1e-2


def _poly(cfg):
    (poly,) = [s for s in cfg.param_scheduler if s.type == "PolyLR"]
    return poly


def test_paper_config_decays_the_lr_polynomially_over_the_whole_run(paper):
    cfg, _, _ = paper
    poly = _poly(cfg)
    assert poly.power == 0.9 and poly.end == 160000 and not poly.by_epoch


def test_paper_config_decays_the_lr_to_a_tenth_of_its_base(paper):
    cfg, _, _ = paper
    assert math.isclose(_poly(cfg).eta_min, 0.1 * cfg.optim_wrapper.optimizer.lr) and cfg.min_lr_ratio == 0.1


def test_paper_config_backbone_is_mmsegs_vit_16_at_512_with_patch_bias_final_norm_and_cls(paper):
    bb = paper[0].model.backbone
    assert bb.type == "VisionTransformer" and bb.patch_bias is True and bb.final_norm is True
    assert bb.with_cls_token and tuple(bb.img_size) == (512, 512) and bb.patch_size == 16


def test_paper_config_backbone_has_the_size_of_the_named_vit(paper):
    cfg, dim, heads = paper
    bb = cfg.model.backbone
    assert bb.embed_dims == dim and bb.num_heads == heads and bb.num_layers == 12


def test_paper_config_backbone_uses_layernorm_1e_6_bicubic_positions_and_drop_path_0_1(paper):
    bb = paper[0].model.backbone
    assert bb.norm_cfg == dict(type="LN", eps=1e-6) and bb.interpolate_mode == "bicubic" and bb.drop_path_rate == 0.1


def test_paper_config_backbone_outputs_the_last_layer_and_initialises_nothing_itself(paper):
    bb = paper[0].model.backbone
    assert bb.out_indices == -1 and bb.init_cfg is None


def test_paper_config_head_is_a_linear_classifier_over_the_150_ade_classes(paper):
    cfg, dim, _ = paper
    head = cfg.model.decode_head
    assert head.type == "FCNHead" and head.num_convs == 0 and head.concat_input is False
    assert head.in_channels == head.channels == dim and head.num_classes == 150 and head.dropout_ratio == 0.0


def test_paper_config_normalises_rgb_with_the_imagenet_mean_and_std(paper):
    pre = paper[0].model.data_preprocessor
    assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD and pre.bgr_to_rgb


def test_paper_config_evaluates_miou(paper):
    cfg, _, _ = paper
    assert cfg.val_evaluator.type == "IoUMetric" and cfg.val_evaluator.iou_metrics == ["mIoU"]


def test_paper_config_trains_on_ade20k(paper):
    assert paper[0].train_dataloader.dataset.type == "ADE20KDataset"


def test_paper_config_tests_with_a_sliding_512_window(paper):
    cfg, _, _ = paper
    assert cfg.model.test_cfg.mode == "slide" and tuple(cfg.model.test_cfg.crop_size) == (512, 512)


def test_paper_config_verifies_the_pretrained_backbone(paper):
    assert "VerifyPretrainedBackboneHook" in [h["type"] for h in paper[0].custom_hooks]


def test_paper_config_downloads_nothing(paper):
    assert "http" not in paper[0].pretty_text


# what the entry derives from the toy config, a checkpoint and the data


def _entry_args(train, path, toy_root, work_dir):
    return train.parse_args(
        [TOY_CFG, "--init", path, "--data-root", toy_root, "--lr", "8e-5", "--launcher", "pytorch"]
        + ["--work-dir", str(work_dir)]
    )


@pytest.fixture(scope="module")
def prepared_on_two_processes(ref_ckpt, toy_root, tmp_path_factory):
    """``(cfg, info)`` the entry prepares for lr 8e-5 with WORLD_SIZE=2."""
    from transfer.segmenter import train

    _, path = ref_ckpt
    args = _entry_args(train, path, toy_root, tmp_path_factory.mktemp("entry"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", "2")
        return train.prepare_config(args)


def test_entry_splits_the_total_batch_over_the_processes(prepared_on_two_processes):
    cfg, info = prepared_on_two_processes
    assert cfg.train_dataloader.batch_size == 2 and info["total_batch_size"] == 4


def test_entry_sets_eta_min_to_a_tenth_of_the_given_lr(prepared_on_two_processes):
    cfg, _ = prepared_on_two_processes
    assert math.isclose(cfg.param_scheduler[0].eta_min, 8e-6)


def test_entry_ends_the_poly_schedule_at_the_configs_last_iteration(prepared_on_two_processes):
    cfg, _ = prepared_on_two_processes
    assert cfg.param_scheduler[0].end == 300


def test_entry_takes_the_number_of_classes_from_the_data(prepared_on_two_processes):
    cfg, info = prepared_on_two_processes
    assert info["num_classes"] == 4 and cfg.model.decode_head.num_classes == 4


def test_entry_refuses_a_total_batch_not_divisible_by_the_world_size(ref_ckpt, toy_root, monkeypatch, tmp_path):
    from transfer.segmenter import train

    _, path = ref_ckpt
    args = _entry_args(train, path, toy_root, tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="not divisible"):
        train.prepare_config(args)
