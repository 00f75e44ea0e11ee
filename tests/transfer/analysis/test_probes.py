"""Dense probes: mIoU equal to MMSeg's metric, majority labels, variance removal, 1-NN."""

import math

import numpy as np
import pytest
import torch

from transfer.analysis import probes

# dense probes


def test_miou_matches_mmseg_iou_metric():
    from mmseg.evaluation.metrics import IoUMetric

    g = torch.Generator().manual_seed(0)
    k = 6
    gt = torch.randint(0, k - 1, (500,), generator=g)  # class 5 never in gt
    gt[torch.rand(500, generator=g) < 0.15] = 255
    pred = torch.where(torch.rand(500, generator=g) < 0.6, gt, torch.randint(0, k, (500,), generator=g))
    pred[gt == 255] = torch.randint(0, k, (int((gt == 255).sum()),), generator=g)
    pred[pred == 255] = 0
    ours = probes.segmentation_metrics(pred, gt, k)
    inter, union, area_pred, area_gt = IoUMetric.intersect_and_union(pred, gt, k, 255)
    ref = IoUMetric.total_area_to_metrics(inter, union, area_pred, area_gt)
    assert ours["miou"] == pytest.approx(float(np.nanmean(ref["IoU"])), abs=1e-6)
    assert ours["acc"] == pytest.approx(float(ref["aAcc"]), abs=1e-6)
    assert ours["macc"] == pytest.approx(float(np.nanmean(ref["Acc"])), abs=1e-6)
    np.testing.assert_allclose(np.array(ours["iou"]), np.asarray(ref["IoU"], dtype=np.float64), atol=1e-6)

    # hand-made confusion: gt 0 0 1 1 2 ignore, pred 0 1 1 1 0 2, 4 classes (class 3 absent everywhere)
    gt = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    m = probes.segmentation_metrics(pred, gt, 4)
    # class 0: I=1, U=2+2-1=3; class 1: I=2, U=2+3-2=3; class 2: I=0, U=1; class 3: U=0 -> excluded
    assert m["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and math.isnan(m["iou"][3])
    assert m["miou"] == pytest.approx(1 / 3) and m["acc"] == pytest.approx(3 / 5)
    assert m["num_classes_present"] == 3


def test_majority_labels_and_reduce_zero():
    lab = torch.tensor(
        [
            [1, 1, 255, 255],
            [1, 2, 255, 3],
            [2, 2, 255, 4],
            [3, 3, 4, 255],
        ]
    )
    out = probes.majority_patch_labels(lab, 2)
    # (0,0): 1 wins 3:1; (0,1): ignore wins 3:1; (1,0): 2/3 tie -> smaller (2); (1,1): 4/255 tie -> 4
    assert out.tolist() == [[1, 255], [2, 4]]
    batched = probes.majority_patch_labels(torch.stack([lab, lab.flip(1)]), 2)
    assert batched.shape == (2, 2, 2) and batched[0].tolist() == [[1, 255], [2, 4]]
    assert probes.reduce_zero_label(torch.tensor([0, 1, 5])).tolist() == [255, 0, 4]
    # extra pixels beyond the last full patch are cropped
    assert probes.majority_patch_labels(torch.ones(5, 7, dtype=torch.long), 2).shape == (2, 3)


def test_top_variance_removal_drops_exactly_those_dims():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 5.0, 0.1, 3.0, 0.5, 8.0])
    x = torch.randn(2000, 6, generator=g) * scales
    dims = probes.top_variance_dims(x, 2)
    assert dims.tolist() == [5, 1]
    kept = probes.remove_dims(x, dims)
    assert torch.equal(kept, x[:, [0, 2, 3, 4]])
    assert probes.top_variance_dims(x, 0).numel() == 0
    with pytest.raises(ValueError):
        probes.top_variance_dims(x, 6)


def test_nn_probe_one_hot_tokens_is_perfect():
    g = torch.Generator().manual_seed(0)
    k = 5
    ytr = torch.randint(0, k, (200,), generator=g)
    ytr[:k] = torch.arange(k)
    yva = torch.randint(0, k, (80,), generator=g)
    xtr = torch.nn.functional.one_hot(ytr, k).float()
    xva = torch.nn.functional.one_hot(yva, k).float() * 3.0  # cosine: scale-invariant
    pred = probes.nn_probe(xtr, ytr, xva, chunk=7)
    m = probes.segmentation_metrics(pred, yva, k)
    assert m["acc"] == 1.0 and m["miou"] == 1.0
    pred_lin = probes.linear_probe(xtr + 0.01 * torch.randn(200, k, generator=g), ytr, xva, k, steps=100)
    assert probes.segmentation_metrics(pred_lin, yva, k)["acc"] == 1.0


def test_run_probes_skips_ignored_patches():
    # 2 images of a 2x2 grid; features are one-hot of a hidden label, some patches ignored
    lab = torch.tensor([[[0, 1], [2, 255]], [[1, 255], [0, 2]]])
    hidden = torch.tensor([0, 1, 2, 0, 1, 2, 0, 2])  # the ignored patches' features are unrelated
    feats = {0: torch.nn.functional.one_hot(hidden, 3).float()}
    res = probes.run_probes(feats, lab, feats, lab, 3, probes=("nn",), remove_top_var=(0,), progress=False)
    assert len(res) == 1 and res[0].num_train_patches == 6 and res[0].num_val_patches == 6
    assert res[0].acc == 1.0 and res[0].layer == 1
