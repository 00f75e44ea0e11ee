"""The DINO, masked-patch and KoLeo losses against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import dino_cls_loss, koleo_loss, masked_patch_loss


def test_dino_loss_hand_computed():
    # 2 global crops, 1 local, batch 1, K = 2
    s_g = torch.tensor([[[0.0, 0.1]], [[0.2, 0.0]]])
    s_l = torch.tensor([[[0.1, 0.1]]])
    t = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])
    temp = 0.1

    def ce(tp, s):
        ls = [v / temp for v in s]
        lse = math.log(sum(math.exp(v) for v in ls))
        return -sum(tp[k] * (ls[k] - lse) for k in range(2))

    # terms: g0 vs t1, g1 vs t0, l vs t0, l vs t1
    want = (
        ce([1.0, 0.0], [0.0, 0.1])
        + ce([0.5, 0.5], [0.2, 0.0])
        + ce([0.5, 0.5], [0.1, 0.1])
        + ce([1.0, 0.0], [0.1, 0.1])
    ) / 4
    assert abs(dino_cls_loss(s_g, s_l, t, temp).item() - want) < 1e-5


@pytest.fixture
def crops_and_pair_terms():
    """Random float64 student logits of 2 global and 4 local crops, teacher targets of the 2 global crops, and the
    pair terms: the CE of each global crop against the other crop's target, then of each local against each."""
    g = torch.Generator().manual_seed(0)
    s_g, s_l = (
        torch.randn(2, 3, 50, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 50, generator=g, dtype=torch.float64),
    )
    t = torch.softmax(torch.randn(2, 3, 50, generator=g, dtype=torch.float64) / 0.1, -1)

    def ce(tp, s):
        return -(tp * F.log_softmax(s / 0.1, -1)).sum(-1).mean()

    terms = [ce(t[1], s_g[0]), ce(t[0], s_g[1])] + [ce(tj, sl) for sl in s_l for tj in t]
    return s_g, s_l, t, terms


def test_dino_loss_with_summed_teachers_equals_the_mean_of_the_pair_terms(crops_and_pair_terms):
    """Local crops take one CE against the summed global targets; that must equal the mean of the pair terms."""
    s_g, s_l, t, terms = crops_and_pair_terms
    want = torch.stack(terms).mean()
    torch.testing.assert_close(dino_cls_loss(s_g, s_l, t, 0.1), want, rtol=1e-12, atol=1e-12)


def test_dino_loss_without_local_crops_is_the_mean_of_the_two_global_pair_terms(crops_and_pair_terms):
    s_g, _, t, terms = crops_and_pair_terms
    torch.testing.assert_close(dino_cls_loss(s_g, None, t, 0.1), torch.stack(terms[:2]).mean(), rtol=1e-12, atol=1e-12)


def test_masked_patch_loss_hand_computed():
    masks = torch.tensor([[True, True, False], [False, False, False], [False, True, False]])
    s = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])  # 3 masked patches
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    temp = 1.0
    ce = [
        -math.log(math.exp(0) / (math.exp(0) + math.exp(1))),
        -math.log(math.exp(1) / (math.exp(1) + 1)),
        -math.log(0.5),
    ]
    want = (ce[0] / 2 + ce[1] / 2 + ce[2] / 1) / 3  # per-crop weights, divided by the number of crops (3)
    assert abs(masked_patch_loss(s, t, masks, temp).item() - want) < 1e-6


@pytest.mark.parametrize("scope", ["local", "global"])
def test_koleo_hand_computed(scope):
    """On a single process the global scope gathers nothing more: both scopes give the hand-computed value."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # normalised: a=(1,0), b=(0,1), c=(.707,.707); nn: a->c, b->c, c->a (tie with b; argmax picks the first)
    d_ac = math.sqrt((1 - 1 / math.sqrt(2)) ** 2 + (1 / math.sqrt(2)) ** 2)
    want = -(math.log(d_ac) * 3) / 3
    assert abs(koleo_loss(x, scope=scope).item() - want) < 1e-5
