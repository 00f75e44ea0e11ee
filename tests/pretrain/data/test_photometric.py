"""Photometric augmentation on the device: batched ops against torchvision per image, and the drawn distributions."""

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from pretrain.data import photometric as P

JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
FACTORS = ("brightness", "contrast", "saturation", "hue")


def _image(height, width, seed):
    """Smooth colour waves plus noise: saturated and grey regions, values across 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.linspace(0, 1, height)[:, None], np.linspace(0, 1, width)[None, :]
    chans = [np.cos(3 * y + c + seed) * np.sin(4 * x + 2 * c) * 110 + 128 for c in range(3)]
    arr = np.stack(chans, -1) + rng.normal(0, 25, (height, width, 3))
    return torch.from_numpy(arr.clip(0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def crops():
    return torch.stack([_image(24, 28, s) for s in range(48)])


def _col(params, name):
    return params[:, P.COLUMNS.index(name)]


def torchvision_reference(crop, row, pil=False):
    """One crop through torchvision's functional ops with the drawn parameters (tensor kernels, or PIL's)."""
    d = dict(zip(P.COLUMNS, row.tolist()))
    x = TF.to_pil_image(crop) if pil else crop
    if d["jitter"]:
        for step in range(4):
            op = int(d[f"order{step}"])
            x = JITTER_OPS[op](x, d[FACTORS[op]])
    if d["grayscale"]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if d["blur"]:
        x = TF.gaussian_blur(x, [9, 9], [d["sigma"], d["sigma"]])
    if d["solarize"]:
        x = TF.solarize(x, 128)
    return TF.pil_to_tensor(x) if pil else x


@pytest.mark.parametrize("probs", [(0.5, 0.5, 0.5, 0.8), (1.0, 1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 1.0)])
def test_the_batched_ops_equal_torchvision_per_image_within_one_level(crops, probs):
    blur, solarize, gray, jitter = probs
    params = P.draw_params(torch.Generator().manual_seed(1), len(crops), blur, solarize, gray, jitter)
    out = P.apply(crops, params)
    ref = torch.stack([torchvision_reference(c, row) for c, row in zip(crops, params)]).float()
    diff = (out - ref).abs()
    assert out.dtype == torch.float32 and torch.equal(out, out.round())
    assert diff.max() <= 1.0, diff.max()
    assert (diff > 0).float().mean() < 1e-3  # float rounding only: almost every pixel equal
    assert (out - crops.float()).abs().mean() > 5  # the ops did something


def test_each_crop_gets_its_own_order_of_the_four_jitter_ops(crops):
    """The same factors in two orders give different images, each equal to torchvision in that order."""
    params = torch.zeros(2, P.NUM_COLUMNS)
    params[:, P.COLUMNS.index("jitter")] = 1
    params[:, 5:9] = torch.tensor([1.3, 0.7, 1.15, 0.08])
    params[0, 1:5] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    params[1, 1:5] = torch.tensor([3.0, 2.0, 1.0, 0.0])
    pair = crops[:1].expand(2, -1, -1, -1)
    out = P.apply(pair, params)
    assert (out[0] - out[1]).abs().max() > 2
    for k in range(2):
        assert (out[k] - torchvision_reference(pair[k], params[k]).float()).abs().max() <= 1


def test_against_the_worker_pil_kernels_only_hue_differs_by_more_than_a_level(crops):
    """The worker path runs torchvision on PIL images: brightness is exact, contrast, saturation, grayscale and
    blur within one level; PIL's hue works in 8-bit HSV (its quantisation is the larger difference)."""
    g = torch.Generator().manual_seed(3)
    worst = {}
    for name in ("brightness", "contrast", "saturation", "hue", "grayscale", "blur", "solarize"):
        drawn = P.draw_params(g, len(crops), 1.0, 1.0, 1.0, 1.0)
        if name in FACTORS:  # the single op (PIL's hue shift of 0 is no identity, so no chain of four here)
            op, f = FACTORS.index(name), drawn[:, 5 + FACTORS.index(name)]
            ours = P._JITTER_OPS[op](crops.float(), f)
            ref = [TF.pil_to_tensor(JITTER_OPS[op](TF.to_pil_image(c), float(v))) for c, v in zip(crops, f)]
        else:
            params = torch.zeros(len(crops), P.NUM_COLUMNS)
            params[:, P.COLUMNS.index(name)] = 1
            params[:, P.COLUMNS.index("sigma")] = _col(drawn, "sigma")
            ours = P.apply(crops, params)
            ref = [torchvision_reference(c, row, pil=True) for c, row in zip(crops, params)]
        worst[name] = float((ours - torch.stack(ref).float()).abs().max())
    assert worst["brightness"] == 0 and worst["solarize"] == 0, worst
    assert max(worst[k] for k in ("contrast", "saturation", "grayscale", "blur")) <= 1, worst
    assert 1 < worst["hue"] <= 16, worst


def test_no_operation_leaves_the_crops_unchanged_and_normalize_is_to_tensor_then_normalize(crops):
    out = P.apply(crops, torch.zeros(len(crops), P.NUM_COLUMNS))
    assert torch.equal(out, crops.float())
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = torch.stack([TF.normalize(TF.to_tensor(TF.to_pil_image(c)), mean, std) for c in crops[:4]])
    torch.testing.assert_close(P.normalize(out[:4], mean, std), ref, rtol=0, atol=1e-6)


def test_bad_shapes_are_refused(crops):
    with pytest.raises(ValueError, match="params"):
        P.apply(crops, torch.zeros(len(crops) - 1, P.NUM_COLUMNS))
    with pytest.raises(ValueError, match="crops"):
        P.apply(crops[:, :1], torch.zeros(len(crops), P.NUM_COLUMNS))
    with pytest.raises(ValueError, match="blur_prob"):
        P.draw_params(None, 3, [0.1, 0.2])


# ------------------------------------------------------------------------------------------- distributions
N = 20000


@pytest.fixture(scope="module")
def drawn():
    blur = torch.tensor([0.0, 0.9, 0.5, 1.0]).repeat(N // 4)
    return P.draw_params(torch.Generator().manual_seed(7), N, blur, 0.2, 0.2, 0.8), blur


def _within_binomial(flags, p, sigmas=5.0):
    n = flags.numel()
    count = float(flags.sum())
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd + 1e-9, (count, n * p, sd)


def _ks_uniform(values, lo, hi):
    """The KS statistic and p-value of ``values`` against U(lo, hi) (scipy when installed, else the asymptotic
    Kolmogorov series)."""
    x = np.sort((values.double().numpy() - lo) / (hi - lo))
    try:
        from scipy import stats

        res = stats.kstest(x, "uniform")
        return res.statistic, res.pvalue
    except ImportError:  # pragma: no cover - scipy is in the pins
        n = len(x)
        d = max(np.max(np.arange(1, n + 1) / n - x), np.max(x - np.arange(n) / n))
        t = math.sqrt(n) * d
        return d, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * t * t) for k in range(1, 100))


def test_drawn_flags_follow_their_probabilities_per_crop(drawn):
    params, blur = drawn
    for name, p in (("jitter", 0.8), ("grayscale", 0.2), ("solarize", 0.2)):
        ok, info = _within_binomial(_col(params, name), p)
        assert ok, (name, info)
    for p in (0.0, 0.9, 0.5, 1.0):
        sel = _col(params, "blur")[blur == p]
        ok, info = _within_binomial(sel, p)
        assert ok, (p, info)
    # the flags are drawn independently: grayscale among jittered crops at its own rate
    ok, info = _within_binomial(_col(params, "grayscale")[_col(params, "jitter") > 0], 0.2)
    assert ok, info


def test_drawn_factors_and_sigma_are_uniform_on_dinov2_ranges(drawn):
    params, _ = drawn
    for name, lo, hi in (
        ("brightness", 0.6, 1.4),
        ("contrast", 0.6, 1.4),
        ("saturation", 0.8, 1.2),
        ("hue", -0.1, 0.1),
        ("sigma", 0.1, 2.0),
    ):
        v = _col(params, name)
        assert v.min() >= lo and v.max() <= hi, name
        stat, pvalue = _ks_uniform(v, lo, hi)
        assert pvalue > 1e-4 and stat < 1.95 / math.sqrt(N), (name, stat, pvalue)
    # a wrong range is caught by the same test: U(0.6, 1.4) against U(0.5, 1.5)
    assert _ks_uniform(_col(params, "brightness"), 0.5, 1.5)[1] < 1e-6


def test_drawn_orders_are_uniform_over_the_24_permutations(drawn):
    params, _ = drawn
    order = params[:, 1:5].long()
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(N, 4))
    codes = (order * torch.tensor([64, 16, 4, 1])).sum(dim=1)
    counts = torch.bincount(codes, minlength=256)
    counts = counts[counts > 0]
    assert counts.numel() == 24
    p = 1 / 24
    sd = math.sqrt(N * p * (1 - p))
    assert (counts.float() - N * p).abs().max() <= 5 * sd, counts
