"""Dense probes: mIoU equal to MMSeg's metric, majority labels, variance removal, 1-NN."""

import math

import numpy as np
import pytest
import torch

from transfer.analysis import probes

# dense probes


@pytest.fixture(scope="module")
def ours_and_mmseg():
    """Our metrics and MMSeg's IoUMetric on a random 6-class case (class 5 never in gt, 15% ignored)."""
    from mmseg.evaluation.metrics import IoUMetric

    g = torch.Generator().manual_seed(0)
    k = 6
    gt = torch.randint(0, k - 1, (500,), generator=g)
    gt[torch.rand(500, generator=g) < 0.15] = 255
    pred = torch.where(torch.rand(500, generator=g) < 0.6, gt, torch.randint(0, k, (500,), generator=g))
    pred[gt == 255] = torch.randint(0, k, (int((gt == 255).sum()),), generator=g)
    pred[pred == 255] = 0
    ours = probes.segmentation_metrics(pred, gt, k)
    inter, union, area_pred, area_gt = IoUMetric.intersect_and_union(pred, gt, k, 255)
    return ours, IoUMetric.total_area_to_metrics(inter, union, area_pred, area_gt)


def test_miou_equals_mmsegs(ours_and_mmseg):
    ours, ref = ours_and_mmseg
    assert ours["miou"] == pytest.approx(float(np.nanmean(ref["IoU"])), abs=1e-6)


def test_pixel_accuracy_equals_mmsegs_aacc(ours_and_mmseg):
    ours, ref = ours_and_mmseg
    assert ours["acc"] == pytest.approx(float(ref["aAcc"]), abs=1e-6)


def test_mean_class_accuracy_equals_mmsegs(ours_and_mmseg):
    ours, ref = ours_and_mmseg
    assert ours["macc"] == pytest.approx(float(np.nanmean(ref["Acc"])), abs=1e-6)


def test_per_class_iou_equals_mmsegs(ours_and_mmseg):
    ours, ref = ours_and_mmseg
    np.testing.assert_allclose(np.array(ours["iou"]), np.asarray(ref["IoU"], dtype=np.float64), atol=1e-6)


@pytest.fixture(scope="module")
def hand_confusion():
    """gt 0 0 1 1 2 ignore, pred 0 1 1 1 0 2, 4 classes (class 3 absent everywhere).

    class 0: I=1, U=2+2-1=3; class 1: I=2, U=2+3-2=3; class 2: I=0, U=1; class 3: U=0 -> excluded."""
    gt = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    return probes.segmentation_metrics(pred, gt, 4)


def test_hand_confusion_per_class_iou(hand_confusion):
    assert hand_confusion["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0])


def test_hand_confusion_iou_of_an_absent_class_is_nan(hand_confusion):
    assert math.isnan(hand_confusion["iou"][3])


def test_hand_confusion_miou_averages_the_present_classes(hand_confusion):
    assert hand_confusion["miou"] == pytest.approx(1 / 3)


def test_hand_confusion_pixel_accuracy_leaves_out_ignored_pixels(hand_confusion):
    assert hand_confusion["acc"] == pytest.approx(3 / 5)


def test_hand_confusion_counts_the_present_classes(hand_confusion):
    assert hand_confusion["num_classes_present"] == 3


MAJORITY_LABELS = torch.tensor(
    [
        [1, 1, 255, 255],
        [1, 2, 255, 3],
        [2, 2, 255, 4],
        [3, 3, 4, 255],
    ]
)


def test_majority_patch_label_is_the_most_frequent_with_ties_to_the_smaller():
    out = probes.majority_patch_labels(MAJORITY_LABELS, 2)
    # (0,0): 1 wins 3:1; (0,1): ignore wins 3:1; (1,0): 2/3 tie -> smaller (2); (1,1): 4/255 tie -> 4
    assert out.tolist() == [[1, 255], [2, 4]]


def test_majority_patch_labels_of_a_batch_are_per_image():
    batched = probes.majority_patch_labels(torch.stack([MAJORITY_LABELS, MAJORITY_LABELS.flip(1)]), 2)
    assert batched.shape == (2, 2, 2) and batched[0].tolist() == [[1, 255], [2, 4]]


def test_reduce_zero_label_makes_0_ignored_and_shifts_the_rest_down():
    assert probes.reduce_zero_label(torch.tensor([0, 1, 5])).tolist() == [255, 0, 4]


def test_majority_patch_labels_crop_pixels_beyond_the_last_full_patch():
    assert probes.majority_patch_labels(torch.ones(5, 7, dtype=torch.long), 2).shape == (2, 3)


@pytest.fixture(scope="module")
def scaled_features():
    """2000 samples of 6 dims with standard deviations 1, 5, 0.1, 3, 0.5, 8."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 5.0, 0.1, 3.0, 0.5, 8.0])
    return torch.randn(2000, 6, generator=g) * scales


def test_top_variance_dims_are_the_highest_variance_dims_in_order(scaled_features):
    assert probes.top_variance_dims(scaled_features, 2).tolist() == [5, 1]


def test_remove_dims_keeps_exactly_the_other_dims(scaled_features):
    x = scaled_features
    kept = probes.remove_dims(x, probes.top_variance_dims(x, 2))
    assert torch.equal(kept, x[:, [0, 2, 3, 4]])


def test_removing_zero_top_variance_dims_selects_none(scaled_features):
    assert probes.top_variance_dims(scaled_features, 0).numel() == 0


def test_removing_every_dim_is_refused(scaled_features):
    with pytest.raises(ValueError):
        probes.top_variance_dims(scaled_features, 6)


@pytest.fixture(scope="module")
def one_hot_tokens():
    """One-hot tokens of 5 labels (every label in train; validation scaled by 3) and a generator to go on with."""
    g = torch.Generator().manual_seed(0)
    k = 5
    ytr = torch.randint(0, k, (200,), generator=g)
    ytr[:k] = torch.arange(k)
    yva = torch.randint(0, k, (80,), generator=g)
    xtr = torch.nn.functional.one_hot(ytr, k).float()
    xva = torch.nn.functional.one_hot(yva, k).float() * 3.0
    return xtr, ytr, xva, yva, k, g


def test_nn_probe_on_one_hot_tokens_is_perfect_at_any_scale(one_hot_tokens):
    """Cosine similarity: scale-invariant."""
    xtr, ytr, xva, yva, k, _ = one_hot_tokens
    m = probes.segmentation_metrics(probes.nn_probe(xtr, ytr, xva, chunk=7), yva, k)
    assert m["acc"] == 1.0 and m["miou"] == 1.0


def test_linear_probe_on_noisy_one_hot_tokens_is_perfect(one_hot_tokens):
    xtr, ytr, xva, yva, k, g = one_hot_tokens
    pred_lin = probes.linear_probe(xtr + 0.01 * torch.randn(200, k, generator=g), ytr, xva, k, steps=100)
    assert probes.segmentation_metrics(pred_lin, yva, k)["acc"] == 1.0


@pytest.fixture(scope="module")
def probe_result():
    """``run_probes`` with the nn probe on 2 images of a 2x2 grid whose features are one-hot of a hidden label,
    some patches ignored (their features unrelated)."""
    lab = torch.tensor([[[0, 1], [2, 255]], [[1, 255], [0, 2]]])
    hidden = torch.tensor([0, 1, 2, 0, 1, 2, 0, 2])
    feats = {0: torch.nn.functional.one_hot(hidden, 3).float()}
    return probes.run_probes(feats, lab, feats, lab, 3, probes=("nn",), remove_top_var=(0,), progress=False)


def test_run_probes_gives_one_result_per_layer_probe_and_removal(probe_result):
    assert len(probe_result) == 1


def test_run_probes_skips_ignored_patches(probe_result):
    assert probe_result[0].num_train_patches == 6 and probe_result[0].num_val_patches == 6


def test_run_probes_on_the_labelled_patches_is_perfect(probe_result):
    assert probe_result[0].acc == 1.0


def test_run_probes_numbers_layers_from_1(probe_result):
    assert probe_result[0].layer == 1
