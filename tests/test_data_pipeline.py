"""Tests of the pretraining data pipeline: multi-crop boxes/flips, position/scale augmentation, masks,
collation, the robust image folder and the seeded dataset (docs/method.md §2, §3)."""

import logging
import math
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from pretrain.data.collate import MaskingCollator, stratified_mask_counts
from pretrain.data.dataset import SSLDataset
from pretrain.data.folder import ImageFolderDataset
from pretrain.data.masking import BoxMaskGenerator, CrossMaskGenerator
from pretrain.data.multicrop import MultiCropAugmentation
from pretrain.data.position_aug import PositionScaleAugmentation, sample_beta, sample_scale
from pretrain.seeding import mix_seeds

# ----------------------------------------------------------------------------------------------- helpers

_PINNED_MIX = 7405809139744024400  # mix_seeds(1, 2, 3)


def _noise_image(width, height, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def _ramp_image(width=256, height=160):
    """Pixel value = column index (0..255) in every channel."""
    row = np.arange(width, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (height, 1))[..., None], 3, axis=2), "RGB")


def _random_boxes(n, rng):
    x0 = rng.uniform(0.0, 0.8, n)
    y0 = rng.uniform(0.0, 0.8, n)
    w = rng.uniform(0.05, 1.0, n) * (1.0 - x0)
    h = rng.uniform(0.05, 1.0, n) * (1.0 - y0)
    return torch.tensor(np.stack([x0, y0, x0 + w, y0 + h], axis=1), dtype=torch.float64)


def _enclosing(boxes):
    return boxes[:, 0].min().item(), boxes[:, 1].min().item(), boxes[:, 2].max().item(), boxes[:, 3].max().item()


@pytest.fixture
def image_dir(tmp_path):
    """Four good images (jpg, png RGBA, png L, bmp) plus three bad ones and a non-image file."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    _noise_image(80, 60, 1).save(root / "a.jpg", quality=90)
    _noise_image(50, 70, 2, "RGBA").save(root / "sub" / "b.png")
    _noise_image(64, 64, 3, "L").save(root / "sub" / "c.png")
    _noise_image(40, 30, 4).save(root / "d.bmp")
    full = tmp_path / "full.jpg"
    _noise_image(96, 96, 5).save(full, quality=95)
    data = full.read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "text.jpg").write_text("this is not a JPEG\n" * 20)
    (root / "sub" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    good = {"a.jpg", "sub/b.png", "sub/c.png", "d.bmp"}
    bad = {"trunc.jpg", "text.jpg", "sub/empty.png"}
    return root, good, bad


def _fake_samples(batch, n_global=2, n_local=3, seed0=0, gsize=8, lsize=4):
    samples = []
    for b in range(batch):
        samples.append(
            {
                "global_crops": [torch.full((3, gsize, gsize), 100.0 * b + c) for c in range(n_global)],
                "local_crops": [torch.full((3, lsize, lsize), 100.0 * b + 50 + c) for c in range(n_local)],
                "global_boxes": torch.rand(n_global, 4),
                "local_boxes": torch.rand(n_local, 4),
                "global_flips": torch.rand(n_global) < 0.5,
                "local_flips": torch.rand(n_local) < 0.5,
                "index": 10 + b,
                "seed": mix_seeds(seed0, b),
                "pos_info": {"s": 0.5 + b, "k": 1.0, "tx": 0.0, "ty": 0.0, "area_A": 0.5},
            }
        )
    return samples


# --------------------------------------------------------------------------------------------- multicrop


def test_multicrop_shapes_boxes_and_scale_ranges():
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_global=2, n_local=4)
    for seed, (w, h) in enumerate([(200, 160), (160, 200), (20, 15)]):
        img = _noise_image(w, h, seed)
        for _ in range(8):
            out = aug(img)
            assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 4
            assert all(c.shape == (3, 32, 32) and c.dtype == torch.float32 for c in out["global_crops"])
            assert all(c.shape == (3, 16, 16) for c in out["local_crops"])
            assert out["global_boxes"].shape == (2, 4) and out["local_boxes"].shape == (4, 4)
            assert out["global_flips"].dtype == torch.bool and out["local_flips"].shape == (4,)
            for key, (lo, hi) in (("global_boxes", (0.32, 1.0)), ("local_boxes", (0.05, 0.32))):
                boxes = out[key]
                assert (boxes >= 0).all() and (boxes <= 1).all()
                assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
                # boxes lie on the pixel grid of the original image
                px = boxes * torch.tensor([w, h, w, h])
                assert torch.allclose(px, px.round(), atol=1e-3)
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                # integer rounding of the crop sides (+-0.5 px each) loosens the range on small images
                slack = 0.5 / min(w, h) * 2 / math.sqrt(lo) + 0.02
                assert (area >= lo * (1 - slack) - 1.5 / (w * h)).all(), (key, area)
                assert (area <= min(1.0, hi * (1 + slack))).all(), (key, area)
    with pytest.raises(ValueError):
        MultiCropAugmentation(global_scale=(0.5, 0.2))
    with pytest.raises(ValueError):
        MultiCropAugmentation(n_global=0)


def test_multicrop_box_and_flip_semantics_on_a_ramp():
    """A horizontal ramp (value = column) checks numerically that the box is the cropped region and that
    flipped crops are mirrored: left/right border values of a crop match the ramp at x0 / x1."""
    width, height = 256, 160
    img = _ramp_image(width, height)
    aug = MultiCropAugmentation(
        global_size=32, local_size=16, n_global=2, n_local=4, mean=(0, 0, 0), std=(1, 1, 1), photometric=False
    )
    flips_seen = set()
    for _ in range(10):
        out = aug(img)
        for kind, size in (("global", 32), ("local", 16)):
            for crop, box, flip in zip(out[f"{kind}_crops"], out[f"{kind}_boxes"], out[f"{kind}_flips"]):
                values = crop[0] * 255.0  # ramp value = pixel column
                assert torch.allclose(values, values[:1].expand_as(values), atol=1.0)  # constant along y
                left, right = values[:, 0].mean().item(), values[:, -1].mean().item()
                step = (box[2] - box[0]).item() * width / size  # source pixels per output pixel
                x0_expected = box[0].item() * width + 0.5 * step - 0.5  # ramp at the first output column centre
                x1_expected = box[2].item() * width - 0.5 * step - 0.5
                tol = 0.25 * step + 1.0  # bicubic edge effects; measured worst case ~0.3 of this
                if bool(flip):
                    left, right = right, left
                assert abs(left - x0_expected) <= tol, (kind, box, flip, left, x0_expected)
                assert abs(right - x1_expected) <= tol, (kind, box, flip, right, x1_expected)
                flips_seen.add(bool(flip))
    assert flips_seen == {True, False}


# ----------------------------------------------------------------------------------- position / scale aug


@pytest.mark.parametrize("enclose", ["global", "all"])
def test_position_aug_enclosing_rectangle_area_and_geometry(enclose):
    aug = PositionScaleAugmentation(mode="beta", enclose=enclose)
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(0)
    unbound = 0
    for _ in range(400):
        gb, lb = _random_boxes(2, rng), _random_boxes(5, rng)
        ngb, nlb, info = aug(gb, lb, gen)
        assert ngb.dtype == gb.dtype and ngb.shape == gb.shape and nlb.shape == lb.shape
        enclosed = ngb if enclose == "global" else torch.cat([ngb, nlb])
        x0, y0, x1, y1 = _enclosing(enclosed)
        assert x0 >= -1e-12 and y0 >= -1e-12 and x1 <= 1 + 1e-12 and y1 <= 1 + 1e-12
        area = (x1 - x0) * (y1 - y0)
        assert 0.2 <= info["s"] <= 1.0
        ax0, ay0, ax1, ay1 = _enclosing(gb if enclose == "global" else torch.cat([gb, lb]))
        assert info["area_A"] == pytest.approx((ax1 - ax0) * (ay1 - ay0), abs=1e-12)
        if math.isclose(info["k"], math.sqrt(info["s"] / info["area_A"]), rel_tol=1e-12):
            unbound += 1
            assert abs(area - info["s"]) < 1e-6
        else:  # the cap binds: the rectangle spans the virtual image in one direction
            assert max(x1 - x0, y1 - y0) == pytest.approx(1.0, abs=1e-9)
            assert area < info["s"]
        # one similarity map for all boxes: sizes scale by k, offsets too (relative geometry preserved)
        old, new = torch.cat([gb, lb]), torch.cat([ngb, nlb])
        assert torch.allclose(
            (new[:, 2] - new[:, 0]) / (old[:, 2] - old[:, 0]), torch.tensor(info["k"], dtype=torch.float64)
        )
        assert torch.allclose(
            (new[:, 3] - new[:, 1]) / (old[:, 3] - old[:, 1]), torch.tensor(info["k"], dtype=torch.float64)
        )
        assert torch.allclose(new[:, :2] - new[:1, :2], info["k"] * (old[:, :2] - old[:1, :2]), atol=1e-12)
        assert torch.allclose(
            new[0, :2],
            torch.tensor([info["tx"], info["ty"]], dtype=torch.float64)
            + info["k"] * (old[0, :2] - torch.tensor([ax0, ay0], dtype=torch.float64)),
        )
    assert unbound > 250


def test_position_aug_scale_distributions():
    s_min, s_max = 0.2, 1.0
    target = stats.beta(2, 5, loc=s_min, scale=s_max - s_min)
    aug = PositionScaleAugmentation(mode="beta")
    gen = torch.Generator().manual_seed(123)
    box = torch.tensor([[0.1, 0.1, 0.3, 0.25]])
    s_call = np.array([aug(box, box, gen)[2]["s"] for _ in range(2000)])
    assert stats.kstest(s_call, target.cdf).pvalue > 0.01
    assert stats.kstest(s_call, stats.uniform(loc=s_min, scale=s_max - s_min).cdf).pvalue < 1e-6  # test has power

    s_vec = sample_scale("beta", s_min, s_max, (2.0, 5.0), 4000, torch.Generator().manual_seed(7)).numpy()
    assert stats.kstest(s_vec, target.cdf).pvalue > 0.01
    # non-integer parameters go through the Gamma (Marsaglia-Tsang) path, also for shape < 1
    for a, b in ((2.5, 3.5), (0.7, 1.3)):
        x = sample_beta(a, b, 4000, torch.Generator().manual_seed(11)).numpy()
        assert stats.kstest(x, stats.beta(a, b).cdf).pvalue > 0.01

    uni = PositionScaleAugmentation(mode="uniform", s_min=0.3, s_max=0.9)
    gen = torch.Generator().manual_seed(5)
    s_uni = np.array([uni(box, box, gen)[2]["s"] for _ in range(2000)])
    assert stats.kstest(s_uni, stats.uniform(loc=0.3, scale=0.6).cdf).pvalue > 0.01

    const = PositionScaleAugmentation(mode="const", s_max=0.5)
    for _ in range(20):
        ngb, _, info = const(box, box, gen)
        assert info["s"] == 0.5
        w, h = (ngb[0, 2] - ngb[0, 0]).item(), (ngb[0, 3] - ngb[0, 1]).item()
        assert w * h == pytest.approx(0.5, abs=1e-6)
    assert PositionScaleAugmentation(mode="const")(box, box, gen)[2]["s"] == 1.0

    same = [sample_scale("beta", n=5, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(same[0], same[1])


def test_position_aug_none_and_errors():
    rng = np.random.default_rng(1)
    gb, lb = _random_boxes(2, rng).float(), _random_boxes(3, rng).float()
    ngb, nlb, info = PositionScaleAugmentation(mode="none")(gb, lb, torch.Generator().manual_seed(0))
    assert torch.equal(ngb, gb) and torch.equal(nlb, lb)
    assert info["k"] == 1.0 and info["s"] == 1.0
    # enclose="global": local boxes follow the same map and may leave the unit square (left unclamped)
    aug = PositionScaleAugmentation(mode="const", s_max=1.0, enclose="global")
    g = torch.tensor([[0.4, 0.4, 0.5, 0.5], [0.45, 0.45, 0.55, 0.55]], dtype=torch.float64)
    loc = torch.tensor([[0.0, 0.0, 0.05, 0.05]], dtype=torch.float64)
    ngb, nlb, info = aug(g, loc, torch.Generator().manual_seed(0))
    assert info["k"] == pytest.approx(1 / 0.15)
    assert (nlb < 0).any()
    for kwargs in ({"mode": "gauss"}, {"enclose": "local"}, {"s_min": 0.0}, {"s_min": 0.8, "s_max": 0.5}):
        with pytest.raises(ValueError):
            PositionScaleAugmentation(**kwargs)
    with pytest.raises(ValueError):
        PositionScaleAugmentation()(torch.zeros(2, 3), None)
    with pytest.raises(ValueError):
        PositionScaleAugmentation()(torch.tensor([[0.5, 0.5, 0.4, 0.6]]), None)


# ------------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("grid", [(14, 14), (5, 7), (2, 2)])
def test_box_mask_exact_counts(grid):
    gen = BoxMaskGenerator(grid)
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(0)
    for k in sorted(set(range(0, n + 1, max(1, n // 25))) | {1, n // 2, n}):
        mask = gen(k, g)
        assert mask.shape == grid and mask.dtype == torch.bool
        assert int(mask.sum()) == k
    a = gen(n // 3, torch.Generator().manual_seed(9))
    b = gen(n // 3, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    for bad in (-1, n + 1):
        with pytest.raises(ValueError):
            gen(bad, g)


def test_box_mask_is_blockwise():
    """On a 14x14 grid, a 40% mask is mostly rectangles: few masked patches have no masked 4-neighbour."""
    gen = BoxMaskGenerator((14, 14))
    g = torch.Generator().manual_seed(2)
    isolated = 0
    for _ in range(20):
        m = gen(78, g)
        p = torch.nn.functional.pad(m.float()[None, None], (1, 1, 1, 1))[0, 0]
        nb = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
        isolated += int((m & (nb == 0)).sum())
    assert isolated <= 10


@pytest.mark.parametrize("grid", [(14, 14), (6, 9), (2, 2), (1, 5)])
def test_cross_mask_exact_and_on_bars(grid):
    gen = CrossMaskGenerator(grid)
    gh, gw = grid
    n = gh * gw
    g = torch.Generator().manual_seed(4)
    for k in sorted(set(range(0, n + 1, max(1, n // 20))) | {1, n}):
        mask, crosses = gen(k, g, return_crosses=True)
        assert int(mask.sum()) == k and mask.shape == grid
        assert crosses == gen.last_crosses
        on_bar = torch.zeros(grid, dtype=torch.bool)
        for r, c, arm_h, arm_v in crosses:
            assert 0 <= r < gh and 0 <= c < gw
            assert 1 <= arm_h <= max(1, gw // 4) and 1 <= arm_v <= max(1, gh // 4)
            on_bar[r, max(0, c - arm_h) : c + arm_h + 1] = True
            on_bar[max(0, r - arm_v) : r + arm_v + 1, c] = True
        assert not (mask & ~on_bar).any(), "a masked patch lies on no cross"
        if k == 1:
            assert mask[crosses[0][0], crosses[0][1]]  # trimming keeps the centre first
    for bad in (-1, n + 1):
        with pytest.raises(ValueError):
            gen(bad, g)


# ----------------------------------------------------------------------------------------------- collate


def test_collate_shapes_and_crop_major_order():
    samples = _fake_samples(5)
    out = MaskingCollator((2, 2))(samples)
    B = 5
    assert out["global_crops"].shape == (2 * B, 3, 8, 8) and out["local_crops"].shape == (3 * B, 3, 4, 4)
    assert out["global_boxes"].shape == (2 * B, 4) and out["local_boxes"].shape == (3 * B, 4)
    assert out["global_flips"].shape == (2 * B,) and out["global_flips"].dtype == torch.bool
    assert out["content_masks"].shape == (2 * B, 4) and out["pos_masks"].shape == (2 * B, 4)
    assert out["n_global"] == 2 and out["n_local"] == 3
    assert out["indices"].tolist() == [10 + b for b in range(B)] and out["indices"].dtype == torch.long
    for c in range(2):
        for b in range(B):
            assert torch.equal(out["global_crops"][c * B + b], samples[b]["global_crops"][c])
            assert torch.equal(out["global_boxes"][c * B + b], samples[b]["global_boxes"][c])
            assert bool(out["global_flips"][c * B + b]) == bool(samples[b]["global_flips"][c])
    for c in range(3):
        for b in range(B):
            assert torch.equal(out["local_crops"][c * B + b], samples[b]["local_crops"][c])
            assert torch.equal(out["local_boxes"][c * B + b], samples[b]["local_boxes"][c])
            assert bool(out["local_flips"][c * B + b]) == bool(samples[b]["local_flips"][c])
    assert out["pos_info"]["s"].tolist() == [0.5 + b for b in range(B)]


@pytest.mark.parametrize("mask_probability", [0.5, 1.0])
@pytest.mark.parametrize("content_fraction", [0.0, 0.5, 1.0])
def test_collate_mask_assignment_and_ratios(mask_probability, content_fraction):
    grid, B = (8, 8), 7
    N = 64
    collator = MaskingCollator(grid, mask_probability=mask_probability, content_fraction=content_fraction)
    for seed0 in range(3):
        out = collator(_fake_samples(B, seed0=seed0))
        cm, pm = out["content_masks"], out["pos_masks"]
        n_crops = 2 * B
        n_masked = round(n_crops * mask_probability)
        n_content = round(n_masked * content_fraction)
        assert not (cm.any(1) & pm.any(1)).any(), "a crop got both kinds of mask"
        assert int(cm.any(1).sum()) == n_content
        assert int(pm.any(1).sum()) == n_masked - n_content
        for masks in (cm, pm):
            counts = masks.sum(1)
            ratios = counts[counts > 0].double() / N
            assert ((ratios >= 0.1) & (ratios <= 0.5)).all()
            # stratification (DINOv2): the i-th smallest count lies in the i-th stratum of linspace(0.1, 0.5)
            m = len(ratios)
            if m:
                probs = torch.linspace(0.1, 0.5, m + 1, dtype=torch.float64).tolist()
                lo_c, hi_c = math.ceil(0.1 * N), math.floor(0.5 * N)
                for i, k in enumerate(sorted(counts[counts > 0].tolist())):
                    assert min(hi_c, max(lo_c, int(N * probs[i]))) <= k <= min(hi_c, max(lo_c, int(N * probs[i + 1])))


def test_collate_determinism_and_seed_dependence():
    collator = MaskingCollator((6, 6))
    a = collator(_fake_samples(6, seed0=1))
    b = collator(_fake_samples(6, seed0=1))
    c = collator(_fake_samples(6, seed0=2))
    assert torch.equal(a["content_masks"], b["content_masks"]) and torch.equal(a["pos_masks"], b["pos_masks"])
    assert not (torch.equal(a["content_masks"], c["content_masks"]) and torch.equal(a["pos_masks"], c["pos_masks"]))
    # the mix is pure arithmetic (no salted hash): pinned value, identical in every process and Python run
    assert mix_seeds(0, 0, 0) == mix_seeds(0, 0, 0) != mix_seeds(0, 0, 1)
    assert 0 <= mix_seeds(2**70, -5) < 2**63
    assert mix_seeds(1, 2, 3) == _PINNED_MIX


def test_collate_errors_and_ratio_helper():
    with pytest.raises(ValueError):
        MaskingCollator((1, 1))  # no integer count within [0.1, 0.5] of one patch
    with pytest.raises(ValueError):
        MaskingCollator((4, 4), content_shape="circle")
    with pytest.raises(ValueError):
        MaskingCollator((4, 4), mask_probability=1.5)
    samples = _fake_samples(2)
    del samples[1]["seed"]
    with pytest.raises(ValueError, match="seed"):
        MaskingCollator((2, 2))(samples)
    for seed in range(5):
        counts = stratified_mask_counts(4, 100, (0.1, 0.5), torch.Generator().manual_seed(seed))
        for i, c in enumerate(sorted(counts)):  # one count per stratum [10, 20], [20, 30], [30, 40], [40, 50]
            assert 10 * (i + 1) - 1 <= c <= 10 * (i + 2)


# ------------------------------------------------------------------------------------------------ folder


def test_folder_counts_bad_files_and_never_fails(image_dir, caplog):
    root, good, bad = image_dir
    ds = ImageFolderDataset(root)
    assert len(ds) == len(good) + len(bad)
    assert ds.num_ignored == 1  # notes.txt: not an image by extension, not counted as skipped
    rel = [str(os.path.relpath(p, root)) for p in ds.paths]
    assert rel == sorted(rel)
    with caplog.at_level(logging.WARNING, logger="pretrain"):
        for _ in range(2):
            loaded = {rel[i]: ds.load(i) for i in range(len(ds))}
    assert {k for k, v in loaded.items() if v is None} == bad
    assert all(v.mode == "RGB" for v in loaded.values() if v is not None)
    assert ds.num_skipped == len(bad)
    assert {str(os.path.relpath(p, root)) for p in ds.skipped_paths} == bad
    warnings = [r for r in caplog.records if r.name == "pretrain" and r.levelno == logging.WARNING]
    assert len(warnings) == len(bad)  # logged once each

    validated = ImageFolderDataset(root, validate=True)
    assert validated.num_skipped == len(bad)
    assert ImageFolderDataset(root).scan_for_corrupt() == len(bad)

    listing = root / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text("# comment\n../a.jpg\n\n../trunc.jpg\n../missing.png\n" + str(root / "d.bmp") + "\n")
    from_list = ImageFolderDataset(listing, validate=True)
    assert len(from_list) == 4 and from_list.num_skipped == 2


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no image file"):
        ImageFolderDataset(tmp_path / "only_text")
    (tmp_path / "all_bad").mkdir()
    (tmp_path / "all_bad" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="can be read"):
        ImageFolderDataset(tmp_path / "all_bad", validate=True)
    lazy = SSLDataset(
        ImageFolderDataset(tmp_path / "all_bad"), MultiCropAugmentation(32, 16, 2, 1), PositionScaleAugmentation()
    )
    with pytest.raises(RuntimeError, match="can be read"):
        lazy[0]


# ----------------------------------------------------------------------------------------------- dataset


def _make_dataset(root, seed=0, **mc):
    kwargs = dict(global_size=32, local_size=16, n_global=2, n_local=3)
    kwargs.update(mc)
    return SSLDataset(ImageFolderDataset(root), MultiCropAugmentation(**kwargs), PositionScaleAugmentation(), seed)


def _assert_same(a, b):
    for key in ("global_crops", "local_crops"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key]))
    for key in ("global_boxes", "local_boxes", "global_flips", "local_flips"):
        assert torch.equal(a[key], b[key])
    assert a["seed"] == b["seed"] and a["pos_info"] == b["pos_info"] and a["source_index"] == b["source_index"]


def test_ssl_dataset_substitutes_bad_images(image_dir):
    root, good, bad = image_dir
    ds = _make_dataset(root)
    rel = [str(os.path.relpath(p, root)) for p in ds.images.paths]
    for i in range(len(ds)):
        s = ds[i]
        assert s["index"] == i
        assert len(s["global_crops"]) == 2 and s["global_crops"][0].shape == (3, 32, 32)
        assert len(s["local_crops"]) == 3 and s["local_crops"][0].shape == (3, 16, 16)
        assert all(torch.isfinite(c).all() for c in s["global_crops"] + s["local_crops"])
        assert rel[s["source_index"]] in good
        assert (s["source_index"] == i) == (rel[i] in good)
        enclosing = _enclosing(torch.cat([s["global_boxes"], s["local_boxes"]]).double())
        assert min(enclosing) >= -1e-6 and max(enclosing) <= 1 + 1e-6
        assert set(s["pos_info"]) == {"s", "k", "tx", "ty", "area_A"}
    assert ds.num_substitutions == len(bad)
    assert ds.num_skipped == len(bad)
    # a bad index is substituted the same way every time
    bad_index = rel.index("trunc.jpg")
    _assert_same(ds[bad_index], ds[bad_index])


def test_ssl_dataset_determinism_and_global_rng(image_dir):
    root, _, _ = image_dir
    ds = _make_dataset(root)
    torch.manual_seed(1234)
    random.seed(99)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    a = ds[0]
    assert torch.equal(torch.get_rng_state(), torch_state), "__getitem__ changed torch's global RNG"
    assert random.getstate() == py_state, "__getitem__ changed python's global RNG"
    _assert_same(a, ds[0])
    _assert_same(a, _make_dataset(root)[0])  # a fresh object, same (seed, epoch, index)
    ds.set_epoch(1)
    b = ds[0]
    assert b["seed"] != a["seed"]
    assert not all(torch.equal(x, y) for x, y in zip(a["global_crops"], b["global_crops"]))
    assert not torch.equal(a["global_boxes"], b["global_boxes"])
    ds.set_epoch(0)
    _assert_same(a, ds[0])
    assert _make_dataset(root, seed=1)[0]["seed"] != a["seed"]


def test_dataloader_workers_match_main_process(image_dir):
    root, _, _ = image_dir
    ds = _make_dataset(root)
    collator = MaskingCollator((2, 2))
    kwargs = dict(batch_size=4, shuffle=False, collate_fn=collator)
    main = list(torch.utils.data.DataLoader(ds, num_workers=0, **kwargs))
    workers = list(torch.utils.data.DataLoader(ds, num_workers=2, **kwargs))
    assert len(main) == len(workers) == 2
    for x, y in zip(main, workers):
        for key in ("global_crops", "local_crops", "global_boxes", "local_boxes", "content_masks", "pos_masks"):
            assert torch.equal(x[key], y[key]), key
        assert x["indices"].tolist() == y["indices"].tolist()
