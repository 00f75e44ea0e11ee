"""CR2PQ's patch and global losses (pretrain/losses/cr2pq.py, CR2PQ Eqs. 9-10) against hand computations."""

from __future__ import annotations

import pytest
import torch

from pretrain.losses.cr2pq import global_loss, normalize_targets, patch_loss

# 2 images x 2 patches x 2 channels
PRED = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, -1.0], [0.5, 0.5]]])
TARGET = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [0.5, -0.5]]])


def test_the_patch_loss_at_p_2_is_the_mean_squared_distance_per_patch():
    # per patch: 1 + 4 = 5, 1 + 1 = 2 | 4 + 4 = 8, 0 + 1 = 1 -> mean 4
    assert patch_loss(PRED, TARGET, 2.0).item() == pytest.approx(4.0)


def test_the_patch_loss_at_p_1_is_the_mean_l1_distance_per_patch():
    # per patch: 1 + 2 = 3, 1 + 1 = 2 | 2 + 2 = 4, 0 + 1 = 1 -> mean 2.5
    assert patch_loss(PRED, TARGET, 1.0).item() == pytest.approx(2.5)


def test_the_global_loss_compares_the_projection_with_the_mean_teacher_token():
    pred = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    # mean targets: (0.5, 0.5) and (0.75, 0.25); p = 2: 0.25 + 0.25 = 0.5, 0.5625 + 3.0625 = 3.625 -> 2.0625
    assert global_loss(pred, TARGET, 2.0).item() == pytest.approx(2.0625)
    # p = 1: 0.5 + 0.5 = 1, 0.75 + 1.75 = 2.5 -> 1.75
    assert global_loss(pred, TARGET, 1.0).item() == pytest.approx(1.75)


def test_a_perfect_prediction_costs_nothing():
    assert patch_loss(TARGET, TARGET).item() == 0.0 and global_loss(TARGET.mean(1), TARGET).item() == 0.0


def test_mismatched_prediction_and_target_grids_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        patch_loss(PRED[:, :1], TARGET)


def test_layernorm_targets_are_standardised_per_token_and_none_leaves_them():
    t = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])
    assert torch.equal(normalize_targets(t, "none"), t)
    # (1, 3): mean 2, var 1 -> (-1, 1) up to eps; (2, 2): var 0 -> (0, 0)
    assert normalize_targets(t, "layernorm").flatten().tolist() == pytest.approx([-1, 1, 0, 0], abs=1e-5)
