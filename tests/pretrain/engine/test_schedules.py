"""Schedules: the cosine law and the paper's numbers."""

import math

import pytest

from pretrain.engine.config import load_config
from pretrain.engine.schedules import CosineSchedule, build_schedules
from pretrain.methods import IntertwinedDistillation


@pytest.fixture
def cosine():
    """From 1.0 down to 0.1 over 110 iterations, the first 10 a linear warm-up from 0."""
    return CosineSchedule(1.0, 0.1, total_iters=110, warmup_iters=10)


def test_the_warm_up_rises_linearly_from_zero_to_the_base_value(cosine):
    assert cosine[0] == 0.0 and math.isclose(cosine[5], 0.5) and math.isclose(cosine[10], 1.0)


def test_after_the_warm_up_the_schedule_follows_a_half_cosine(cosine):
    assert math.isclose(cosine[60], 0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))


def test_past_its_end_the_schedule_stays_at_its_final_value(cosine):
    assert math.isclose(cosine[200], 0.1)


@pytest.fixture(scope="module")
def paper():
    """The default schedules (and the method's) at batch 512 over 100 epochs of 100 iterations."""
    cfg = load_config([], ["train.data=x", "train.batch_size_per_gpu=512"])
    sched = build_schedules(cfg, iters_per_epoch=100)
    total = sched["total"]
    sched.update(IntertwinedDistillation.schedules(cfg, 100, sched["total"]))
    return cfg, sched, total


def test_the_default_run_is_100_epochs(paper):
    _, _, total = paper
    assert total == 100 * 100


def test_the_teacher_momentum_rises_from_0_992_to_1(paper):
    _, sched, _ = paper
    assert math.isclose(sched["momentum"][0], 0.992) and math.isclose(sched["momentum"][10_000], 1.0)


def test_the_weight_decay_rises_from_0_04_to_0_4(paper):
    _, sched, _ = paper
    assert math.isclose(sched["wd"][0], 0.04) and math.isclose(sched["wd"][9_999], 0.4, rel_tol=1e-4)


def test_the_teacher_temperature_stays_at_0_04(paper):
    _, sched, _ = paper
    assert sched["teacher_temp"][0] == 0.04 and sched["teacher_temp"][5000] == 0.04


def test_the_last_layers_are_frozen_for_the_first_epoch_then_follow_the_lr(paper):
    _, sched, _ = paper
    assert sched["last_layer_lr"][99] == 0.0 and sched["last_layer_lr"][100] == sched["lr"][100] > 0


def test_the_lr_peaks_at_the_scaled_lr_after_10_warm_up_epochs(paper):
    cfg, sched, _ = paper
    assert math.isclose(sched["lr"][1000], cfg.optim.lr)  # end of the 10 warm-up epochs


def test_the_lr_ends_at_1e_minus_6(paper):
    _, sched, _ = paper
    assert math.isclose(sched["lr"][10_000], 1e-6)
