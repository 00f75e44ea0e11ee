"""Teacher targets: Sinkhorn-Knopp (fast and log-domain) and softmax centering."""

import pytest
import torch

from pretrain.losses import sinkhorn_knopp, sinkhorn_knopp_log
from pretrain.losses.targets import SoftmaxCentering


@pytest.fixture
def logits_40x10():
    torch.manual_seed(1)
    return torch.randn(40, 10)


def test_sinkhorn_knopp_rows_and_columns_sum_to_the_marginals(logits_40x10):
    q = sinkhorn_knopp(logits_40x10, temp=0.5, n_iterations=200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(40), atol=1e-4, rtol=0)
    torch.testing.assert_close(q.sum(dim=0), torch.full((10,), 4.0), atol=1e-4, rtol=0)


def test_sinkhorn_knopp_rows_sum_to_one_after_any_number_of_iterations(logits_40x10):
    q3 = sinkhorn_knopp(logits_40x10, temp=0.5, n_iterations=3)
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(40), atol=1e-5, rtol=0)  # rows exact after any count


def test_sinkhorn_knopp_gives_finite_normalised_targets_where_a_naive_exp_overflows():
    logits = torch.full((8, 6), 3.0)
    logits[:, 0] = 10.0  # 10 / 0.04 = 250 > 88: a naive exp overflows float32
    assert torch.isinf(torch.exp(logits / 0.04)).any()
    q = sinkhorn_knopp(logits, temp=0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(8), atol=1e-5, rtol=0)


def test_sinkhorn_knopp_equals_the_naive_algorithm_for_moderate_logits():
    """Shift invariance: subtracting the max changes nothing for moderate logits."""
    moderate = torch.randn(8, 6)
    naive = torch.exp(moderate / 0.1).t()
    naive = naive / naive.sum()
    for _ in range(3):
        naive = naive / naive.sum(dim=1, keepdim=True) / 6
        naive = naive / naive.sum(dim=0, keepdim=True) / 8
    torch.testing.assert_close(sinkhorn_knopp(moderate, 0.1), (naive * 8).t(), atol=1e-6, rtol=1e-5)


def _fast_path_case(index):
    """Cosine-range logits as the heads produce, at the teacher temperatures in use, and a wide random case."""
    torch.manual_seed(2)
    cases = [
        (torch.rand(50, 300) * 2 - 1, 0.04),
        (torch.rand(50, 300) * 2 - 1, 0.07),
        (torch.randn(17, 64) * 3, 0.1),
    ]
    return cases[index]


fast_path_cases = pytest.mark.parametrize("case", range(3), ids=["cosine_t0.04", "cosine_t0.07", "wide_t0.1"])


@fast_path_cases
def test_sinkhorn_knopp_float32_fast_path_equals_log_domain(case):
    logits, temp = _fast_path_case(case)
    ref = sinkhorn_knopp_log(logits.double(), temp)
    torch.testing.assert_close(sinkhorn_knopp(logits, temp).double(), ref, atol=1e-6, rtol=1e-4)


@fast_path_cases
def test_sinkhorn_knopp_float64_fast_path_equals_log_domain_to_float64_rounding(case):
    logits, temp = _fast_path_case(case)
    ref = sinkhorn_knopp_log(logits.double(), temp)
    torch.testing.assert_close(sinkhorn_knopp(logits.double(), temp), ref, atol=1e-12, rtol=1e-10)


@pytest.fixture
def underflowing_logits():
    """Sample 0 scores 13/0.04 = 325 below the others on every prototype: exp underflows for its whole column,
    which the exp-domain path detects (0/0) and hands to the log domain."""
    logits = torch.full((6, 5), 3.0)
    logits[1:] += torch.linspace(0, 0.5, 5)
    logits[0] = -10.0
    return logits


def test_sinkhorn_knopp_gives_finite_normalised_targets_when_a_sample_underflows(underflowing_logits):
    logits = underflowing_logits
    assert (torch.exp((logits[0] - logits.amax(0)) / 0.04) == 0).all()
    q = sinkhorn_knopp(logits, temp=0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(6), atol=1e-5, rtol=0)


def test_sinkhorn_knopp_underflowing_sample_falls_back_to_log_domain(underflowing_logits):
    q = sinkhorn_knopp(underflowing_logits, temp=0.04)
    torch.testing.assert_close(q.double(), sinkhorn_knopp_log(underflowing_logits.double(), 0.04), atol=1e-5, rtol=1e-4)


@pytest.fixture
def centering():
    return SoftmaxCentering(3, momentum=0.9), torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])


def test_softmax_centering_starts_from_a_zero_centre(centering):
    c, t = centering
    torch.testing.assert_close(c(t, 0.5), torch.softmax(t / 0.5, -1))


def test_softmax_centering_moves_the_centre_towards_the_batch_mean_by_ema(centering):
    c, t = centering
    c(t, 0.5)
    torch.testing.assert_close(c.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0]]))


def test_softmax_centering_subtracts_the_updated_centre_at_the_next_call(centering):
    c, t = centering
    c(t, 0.5)
    torch.testing.assert_close(c(t, 0.5), torch.softmax((t - 0.2) / 0.5, -1))
