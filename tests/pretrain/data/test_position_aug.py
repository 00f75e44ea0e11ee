"""The position/scale augmentation: virtual-image geometry and scale laws."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pretrain.data.position_aug import PositionScaleAugmentation, sample_beta, sample_scale
from tests.support.images import enclosing_box, random_boxes


@pytest.fixture(scope="module", params=["global", "all"])
def draws(request):
    """400 draws of the beta-mode augmentation on random boxes, enclosing the global boxes or all boxes: per draw
    the input and output global/local boxes, the info dict, and the enclosing rectangles of input and output."""
    enclose = request.param
    aug = PositionScaleAugmentation(mode="beta", enclose=enclose)
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(400):
        gb, lb = random_boxes(2, rng), random_boxes(5, rng)
        ngb, nlb, info = aug(gb, lb, gen)
        before = enclosing_box(gb if enclose == "global" else torch.cat([gb, lb]))
        after = enclosing_box(ngb if enclose == "global" else torch.cat([ngb, nlb]))
        out.append(dict(gb=gb, lb=lb, ngb=ngb, nlb=nlb, info=info, before=before, after=after))
    return out


def _area(rect):
    x0, y0, x1, y1 = rect
    return (x1 - x0) * (y1 - y0)


def _unbound(info):
    """Whether the cap on the zoom did not bind: k is exactly sqrt(s / area_A)."""
    return math.isclose(info["k"], math.sqrt(info["s"] / info["area_A"]), rel_tol=1e-12)


def test_the_output_boxes_keep_the_dtype_and_shapes_of_the_input(draws):
    for d in draws:
        assert d["ngb"].dtype == d["gb"].dtype and d["ngb"].shape == d["gb"].shape and d["nlb"].shape == d["lb"].shape


def test_the_enclosing_rectangle_stays_inside_the_virtual_image(draws):
    for d in draws:
        x0, y0, x1, y1 = d["after"]
        assert x0 >= -1e-12 and y0 >= -1e-12 and x1 <= 1 + 1e-12 and y1 <= 1 + 1e-12


def test_the_drawn_scale_lies_between_0_2_and_1(draws):
    for d in draws:
        assert 0.2 <= d["info"]["s"] <= 1.0


def test_area_a_is_the_area_of_the_input_enclosing_rectangle(draws):
    for d in draws:
        assert d["info"]["area_A"] == pytest.approx(_area(d["before"]), abs=1e-12)


def test_an_unbound_enclosing_rectangle_gets_the_drawn_area_s(draws):
    for d in draws:
        if _unbound(d["info"]):
            assert abs(_area(d["after"]) - d["info"]["s"]) < 1e-6


def test_a_capped_enclosing_rectangle_spans_the_virtual_image_with_an_area_below_s(draws):
    for d in draws:
        if not _unbound(d["info"]):
            x0, y0, x1, y1 = d["after"]
            assert max(x1 - x0, y1 - y0) == pytest.approx(1.0, abs=1e-9)
            assert _area(d["after"]) < d["info"]["s"]


def test_the_cap_binds_in_fewer_than_150_of_400_draws(draws):
    unbound = sum(_unbound(d["info"]) for d in draws)
    assert unbound > 250


def test_all_boxes_scale_by_k_in_size_and_relative_offset(draws):
    """One similarity map for all boxes: sizes scale by k, offsets too (relative geometry preserved)."""
    for d in draws:
        k = d["info"]["k"]
        old, new = torch.cat([d["gb"], d["lb"]]), torch.cat([d["ngb"], d["nlb"]])
        assert torch.allclose((new[:, 2] - new[:, 0]) / (old[:, 2] - old[:, 0]), torch.tensor(k, dtype=torch.float64))
        assert torch.allclose((new[:, 3] - new[:, 1]) / (old[:, 3] - old[:, 1]), torch.tensor(k, dtype=torch.float64))
        assert torch.allclose(new[:, :2] - new[:1, :2], k * (old[:, :2] - old[:1, :2]), atol=1e-12)


def test_the_enclosing_corner_moves_to_tx_ty(draws):
    for d in draws:
        info, ax0, ay0 = d["info"], d["before"][0], d["before"][1]
        old, new = torch.cat([d["gb"], d["lb"]]), torch.cat([d["ngb"], d["nlb"]])
        assert torch.allclose(
            new[0, :2],
            torch.tensor([info["tx"], info["ty"]], dtype=torch.float64)
            + info["k"] * (old[0, :2] - torch.tensor([ax0, ay0], dtype=torch.float64)),
        )


S_MIN, S_MAX = 0.2, 1.0
SCALED_BETA = stats.beta(2, 5, loc=S_MIN, scale=S_MAX - S_MIN)
BOX = torch.tensor([[0.1, 0.1, 0.3, 0.25]])


def test_beta_mode_draws_s_from_beta_2_5_scaled_to_s_min_s_max():
    aug = PositionScaleAugmentation(mode="beta")
    gen = torch.Generator().manual_seed(123)
    s_call = np.array([aug(BOX, BOX, gen)[2]["s"] for _ in range(2000)])
    assert stats.kstest(s_call, SCALED_BETA.cdf).pvalue > 0.01
    uniform = stats.uniform(loc=S_MIN, scale=S_MAX - S_MIN)
    assert stats.kstest(s_call, uniform.cdf).pvalue < 1e-6  # the test has power


def test_sample_scale_beta_follows_the_scaled_beta():
    s_vec = sample_scale("beta", S_MIN, S_MAX, (2.0, 5.0), 4000, torch.Generator().manual_seed(7)).numpy()
    assert stats.kstest(s_vec, SCALED_BETA.cdf).pvalue > 0.01


@pytest.mark.parametrize(("a", "b"), [(2.5, 3.5), (0.7, 1.3)])
def test_sample_beta_with_non_integer_shapes_follows_the_beta_law(a, b):
    """Non-integer parameters go through the Gamma (Marsaglia-Tsang) path, also for shape < 1."""
    x = sample_beta(a, b, 4000, torch.Generator().manual_seed(11)).numpy()
    assert stats.kstest(x, stats.beta(a, b).cdf).pvalue > 0.01


def test_uniform_mode_draws_s_uniformly_between_s_min_and_s_max():
    uni = PositionScaleAugmentation(mode="uniform", s_min=0.3, s_max=0.9)
    gen = torch.Generator().manual_seed(5)
    s_uni = np.array([uni(BOX, BOX, gen)[2]["s"] for _ in range(2000)])
    assert stats.kstest(s_uni, stats.uniform(loc=0.3, scale=0.6).cdf).pvalue > 0.01


def test_const_mode_gives_every_enclosing_rectangle_the_area_s_max():
    const = PositionScaleAugmentation(mode="const", s_max=0.5)
    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        ngb, _, info = const(BOX, BOX, gen)
        assert info["s"] == 0.5
        w, h = (ngb[0, 2] - ngb[0, 0]).item(), (ngb[0, 3] - ngb[0, 1]).item()
        assert w * h == pytest.approx(0.5, abs=1e-6)


def test_const_mode_defaults_to_s_1():
    assert PositionScaleAugmentation(mode="const")(BOX, BOX, torch.Generator().manual_seed(5))[2]["s"] == 1.0


def test_sample_scale_is_a_function_of_the_generator_seed():
    same = [sample_scale("beta", n=5, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(same[0], same[1])


def test_mode_none_returns_the_boxes_unchanged_with_k_and_s_one():
    rng = np.random.default_rng(1)
    gb, lb = random_boxes(2, rng).float(), random_boxes(3, rng).float()
    ngb, nlb, info = PositionScaleAugmentation(mode="none")(gb, lb, torch.Generator().manual_seed(0))
    assert torch.equal(ngb, gb) and torch.equal(nlb, lb)
    assert info["k"] == 1.0 and info["s"] == 1.0


def test_with_enclose_global_local_boxes_follow_the_same_map_and_may_leave_the_unit_square():
    aug = PositionScaleAugmentation(mode="const", s_max=1.0, enclose="global")
    g = torch.tensor([[0.4, 0.4, 0.5, 0.5], [0.45, 0.45, 0.55, 0.55]], dtype=torch.float64)
    loc = torch.tensor([[0.0, 0.0, 0.05, 0.05]], dtype=torch.float64)
    ngb, nlb, info = aug(g, loc, torch.Generator().manual_seed(0))
    assert info["k"] == pytest.approx(1 / 0.15)
    assert (nlb < 0).any()  # left unclamped


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "gauss"}, {"enclose": "local"}, {"s_min": 0.0}, {"s_min": 0.8, "s_max": 0.5}],
    ids=["unknown_mode", "unknown_enclose", "zero_s_min", "s_min_above_s_max"],
)
def test_an_invalid_position_aug_setting_is_refused(kwargs):
    with pytest.raises(ValueError):
        PositionScaleAugmentation(**kwargs)


@pytest.mark.parametrize(
    "boxes", [torch.zeros(2, 3), torch.tensor([[0.5, 0.5, 0.4, 0.6]])], ids=["three_coordinates", "x1_below_x0"]
)
def test_malformed_boxes_are_refused(boxes):
    with pytest.raises(ValueError):
        PositionScaleAugmentation()(boxes, None)
