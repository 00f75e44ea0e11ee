"""Config loading: unknown keys, bases, lr scaling, every shipped config."""

import glob
import math
import os

import pytest

from pretrain.engine.config import ConfigError, load_config
from pretrain.methods import build_method
from tests.support.paths import REPO

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "pretrain", "**", "*.yaml"), recursive=True))


def test_an_unknown_command_line_key_names_the_closest_known_key():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim.warmup_epoch'.*did you mean 'optim.warmup_epochs'"
    ):
        load_config([], ["optim.warmup_epoch=3", "train.data=x"])


def test_an_unknown_key_in_a_file_names_the_closest_known_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("masking:\n  content_fracton: 0.3\n")
    with pytest.raises(ConfigError, match="masking.content_fraction"):
        load_config([str(bad)], ["train.data=x"])


def test_a_config_file_takes_its_base_file_and_overrides_it():
    """vitb16_dinov2.yaml names vitb16_ours.yaml as its ``_base_`` and switches the field and the masking."""
    cfg = load_config([os.path.join(REPO, "configs/pretrain/vitb16_dinov2.yaml")], ["train.data=x"])
    assert cfg.model.arch == "vit_base" and cfg.pos_field.enabled is False
    assert cfg.masking.mask_probability == 0.5 and cfg.masking.content_fraction == 1.0


def test_sqrt_lr_scaling_uses_the_batch_summed_over_all_processes():
    cfg = load_config([os.path.join(REPO, "configs/pretrain/vitb16_dinov2.yaml")], ["train.data=x"], world_size=8)
    assert math.isclose(cfg.optim.lr, 2e-3 * math.sqrt(512 / 1024))  # 64 x 8 = 512


def test_linear_lr_scaling_is_relative_to_a_batch_of_256():
    cfg = load_config([], ["train.data=x", "optim.lr_scaling=linear_wrt_256", "train.batch_size_per_gpu=32"], 2)
    assert math.isclose(cfg.optim.lr, 2e-3 * 64 / 256)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO, "configs/pretrain/ablations"))))
def test_every_ablation_config_loads_as_a_vit_small(name):
    cfg = load_config([os.path.join(REPO, "configs/pretrain/ablations", name)], ["train.data=x"])
    # DropPos's ablations (its Tables 1-4) are ViT-B/16, as in its paper
    assert cfg.model.arch == ("vit_base" if name.startswith("droppos_") else "vit_small")


def test_a_value_outside_the_choices_is_refused_naming_its_key():
    with pytest.raises(ConfigError, match="pos_field.scale_dist"):
        load_config([], ["train.data=x", "pos_field.scale_dist=gamma"])


config_paths = pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])


@config_paths
def test_every_pretraining_config_scales_its_lr_by_its_rule(path):
    cfg = load_config([path], ["train.data=x"])
    total = cfg.train.batch_size_per_gpu
    factor = {"sqrt_wrt_1024": math.sqrt(total / 1024), "linear_wrt_256": total / 256, "none": 1.0}
    assert math.isclose(cfg.optim.lr, cfg.optim.base_lr * factor[cfg.optim.lr_scaling])


@config_paths
def test_every_pretraining_config_builds_the_method(path):
    build_method(
        load_config(
            [path],
            [
                "train.data=x",
                "model.arch=vit_pico",
                "heads.n_prototypes=16",
                "heads.hidden_dim=16",
                "heads.bottleneck_dim=8",
                "cr2pq.teacher_init=random",  # CR2PQ's recipes read the teacher's weights from a file
            ],
        )
    )  # builds


def test_the_config_list_covers_the_folder_and_its_ablations():
    names = {os.path.relpath(p, os.path.join(REPO, "configs", "pretrain")) for p in CONFIGS}
    assert {"tiny_demo.yaml", "vits16_dinov2.yaml", "vitb16_dinov2.yaml", "ablations/t5b_all_content.yaml"} <= names
