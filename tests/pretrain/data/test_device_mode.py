"""``crops.photometric_on=device``: the worker's plan and uint8 crops, reduced JPEG decoding, collate, the device
stage, and the same distribution of crops as the worker path."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from pretrain.data import photometric as P
from pretrain.data.collate import MaskingCollator
from pretrain.data.dataset import SSLDataset
from pretrain.data.device_stage import DeviceAugmentation
from pretrain.data.folder import ImageFolderDataset
from pretrain.data.multicrop import MultiCropAugmentation
from pretrain.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from pretrain.data.photometric import normalize
from pretrain.data.position_aug import PositionScaleAugmentation


def _scene(width, height, seed=0):
    """A smooth colourful image with some noise (JPEG-friendly, colour to jitter)."""
    rng = np.random.default_rng(seed)
    y, x = np.linspace(0, 1, height)[:, None], np.linspace(0, 1, width)[None, :]
    chans = [np.cos(5 * y + 2 * c) * np.sin(7 * x + c) * 100 + 128 for c in range(3)]
    arr = np.stack(chans, -1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _aug(mode, **kw):
    kw = dict(dict(global_size=32, local_size=16, n_global=2, n_local=3), **kw)
    return MultiCropAugmentation(photometric_on=mode, **kw)


def test_device_mode_draws_the_boxes_and_flips_of_the_photometric_free_worker_path():
    """Every box and flip is drawn before any photometric parameter, in the worker path's order of draws; with
    photometric off the crops are that path's, as uint8 before ToTensor + Normalize."""
    img = _scene(90, 70)
    torch.manual_seed(5)
    ref = _aug("worker", photometric=False)(img)
    for photometric in (False, True):
        torch.manual_seed(5)
        out = _aug("device", photometric=photometric)(img)
        for key in ("global_boxes", "local_boxes", "global_flips", "local_flips"):
            assert torch.equal(out[key], ref[key]), key
        assert out["global_photometric"].shape == (2, P.NUM_COLUMNS)
        assert out["local_photometric"].shape == (3, P.NUM_COLUMNS)
        assert bool(out["global_photometric"].any()) == photometric
    torch.manual_seed(5)
    out = _aug("device", photometric=False)(img)
    for c_dev, c_ref in zip(out["global_crops"] + out["local_crops"], ref["global_crops"] + ref["local_crops"]):
        assert c_dev.dtype == torch.uint8
        torch.testing.assert_close(normalize(c_dev[None], IMAGENET_MEAN, IMAGENET_STD)[0], c_ref, rtol=0, atol=1e-6)


def test_the_plan_keeps_dinov2_probabilities_per_crop_kind():
    aug = _aug("device", n_local=4, blur_prob=(1.0, 0.1, 0.5), grayscale_prob=0.3)
    torch.manual_seed(0)
    plans = [aug.plan((80, 60)) for _ in range(1500)]
    g = torch.stack([p.global_photometric for p in plans])  # (n, 2, C)
    loc = torch.cat([p.local_photometric for p in plans])
    n = len(plans)

    def freq(t, name):
        return float(t[..., P.COLUMNS.index(name)].mean())

    expected = {
        (0, "blur"): 1.0,
        (1, "blur"): 0.1,
        (0, "solarize"): 0.0,
        (1, "solarize"): 0.2,
        (0, "jitter"): 0.8,
        (1, "grayscale"): 0.3,
    }
    for (crop, name), p in expected.items():
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(freq(g[:, crop], name) - p) <= 5 * sd + 1e-9, (crop, name)
    for name, p in (("blur", 0.5), ("solarize", 0.0), ("grayscale", 0.3), ("jitter", 0.8)):
        sd = math.sqrt(p * (1 - p) / loc.shape[0])
        assert abs(freq(loc, name) - p) <= 5 * sd + 1e-9, name


def _crop_statistics(crops: torch.Tensor) -> dict:
    """Per-crop brightness (mean), contrast (std), colourfulness (mean |R - G| + |G - B|) and sharpness (mean
    absolute horizontal difference) of ``(n, 3, H, W)`` pixel values."""
    x = crops.double()
    return {
        "mean": x.mean(dim=(1, 2, 3)),
        "std": x.std(dim=(1, 2, 3)),
        "colour": ((x[:, 0] - x[:, 1]).abs() + (x[:, 1] - x[:, 2]).abs()).mean(dim=(1, 2)),
        "sharp": (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3)),
    }


def _worker_and_device_crops(n, seed, **device_kw):
    img = _scene(64, 48, seed)
    torch.manual_seed(seed)
    worker = _aug("worker", n_local=2)
    w = torch.stack([c for _ in range(n) for c in worker(img)["global_crops"][1:]])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    w = ((w * std + mean) * 255).round()  # back to pixel values
    device = _aug("device", n_local=2, **device_kw)
    samples = [device(img) for _ in range(n)]
    crops = torch.stack([s["global_crops"][1] for s in samples])
    params = torch.stack([s["global_photometric"][1] for s in samples])
    return w, P.apply(crops, params)


def test_worker_and_device_paths_give_the_same_distribution_of_crops():
    """Global crop 2 (jitter, grayscale, blur 0.9, solarise 0.2) of one image, 500 times on each path: two-sample
    KS tests on four per-crop statistics; the same test tells a device path with grayscale at 0.5 apart."""
    w, d = _worker_and_device_crops(500, seed=1)
    sw, sd = _crop_statistics(w), _crop_statistics(d)
    for key in sw:
        assert stats.ks_2samp(sw[key].numpy(), sd[key].numpy()).pvalue > 1e-3, key
    _, wrong = _worker_and_device_crops(500, seed=1, grayscale_prob=0.5)
    assert stats.ks_2samp(sw["colour"].numpy(), _crop_statistics(wrong)["colour"].numpy()).pvalue < 1e-6


# ------------------------------------------------------------------------------------------- reduced decode
@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    _scene(1200, 900, 3).save(root / "big.jpg", quality=92)
    _scene(200, 150, 4).save(root / "small.jpg", quality=92)
    return root


def test_draft_scale_is_the_least_downscale_of_any_crop_rounded_down_to_a_power_of_two():
    aug = _aug("device", reduced_decode=True, global_size=100, local_size=50, n_local=1)
    plan = aug.plan((1000, 1000))
    plan.global_boxes = [(0, 0, 900, 800), (0, 0, 450, 500)]
    plan.local_boxes = [(0, 0, 420, 430)]
    assert aug.draft_scale(plan) == 4  # 450 / 100 = 4.5 is the smallest ratio
    plan.local_boxes = [(0, 0, 99, 400)]
    assert aug.draft_scale(plan) == 1  # 99 / 50 < 2
    assert _aug("device", reduced_decode=False).draft_scale(plan) == 1


def test_a_reduced_decode_keeps_the_boxes_and_nearly_the_pixels(big_jpeg):
    """The same plan rendered from the full decode and from PIL's 1/s JPEG decode: identical boxes and flips; the
    pixels differ by the decoders' rounding (mean well below one level here; docs/fidelity.md has the ImageNet-
    sized figures of benchmarks/data_pipeline.py)."""
    images = ImageFolderDataset(big_jpeg)
    aug = _aug("device", reduced_decode=True, global_size=64, local_size=32, n_local=4, photometric=False)
    torch.manual_seed(0)
    for _ in range(3):
        plan = aug.plan((1200, 900))
        s = aug.draft_scale(plan)
        assert s >= 2
        seen = []

        def draft(size, s=s, seen=seen):
            seen.append(size)
            return s

        small = images.load(0, draft=draft)
        assert seen == [(1200, 900)] and small.size == (math.ceil(1200 / s), math.ceil(900 / s))
        a, b = aug.render(images.load(0), plan), aug.render(small, plan)
        for key in ("global_boxes", "local_boxes", "global_flips", "local_flips"):
            assert torch.equal(a[key], b[key])
        diff = torch.cat(
            [(x.float() - y.float()).abs().flatten() for x, y in zip(a["global_crops"], b["global_crops"])]
        )
        assert diff.mean() < 1.5 and diff.max() < 40, (diff.mean(), diff.max())
    with pytest.raises(ValueError, match="decode of the planned"):
        aug.render(images.load(1), plan)


def test_the_dataset_decodes_smaller_only_in_device_mode_with_reduced_decode(big_jpeg):
    images = ImageFolderDataset(big_jpeg)
    calls = []
    load = images.load
    images.load = lambda i, draft=None: calls.append(draft is not None) or load(i, draft)
    kw = dict(global_size=64, local_size=32, n_local=2)
    out = {}
    for name, mode, reduced in (("worker", "worker", True), ("full", "device", False), ("draft", "device", True)):
        calls.clear()
        ds = SSLDataset(images, _aug(mode, reduced_decode=reduced, **kw), PositionScaleAugmentation("none"), seed=3)
        out[name] = ds[0]
        assert calls == [mode == "device"], name
    assert out["worker"]["global_crops"][0].dtype == torch.float32
    full, draft = out["full"], out["draft"]
    assert full["global_crops"][0].dtype == torch.uint8 and "global_photometric" in full
    for key in ("global_boxes", "local_boxes", "global_flips", "global_photometric", "local_photometric"):
        assert torch.equal(full[key], draft[key]), key
    assert not torch.equal(full["global_crops"][0], draft["global_crops"][0])  # decoded at 1/2 or less
    assert (full["global_crops"][0].float() - draft["global_crops"][0].float()).abs().mean() < 1.5


# ------------------------------------------------------------------------------------------- collate and device stage
def test_collate_and_the_device_stage_give_the_worker_path_batch_layout():
    img = _scene(70, 60)
    aug = _aug("device")
    samples = []
    for i in range(3):
        torch.manual_seed(i)
        s = aug(img)
        samples.append(dict(s, index=i, seed=100 + i))
    batch = MaskingCollator((2, 2), (0.1, 0.5))(samples)
    assert batch["global_crops"].dtype == torch.uint8 and batch["global_photometric"].shape == (6, P.NUM_COLUMNS)
    assert torch.equal(batch["global_photometric"][1], samples[1]["global_photometric"][0])  # crop-major
    assert torch.equal(batch["global_photometric"][3], samples[0]["global_photometric"][1])
    assert torch.equal(batch["local_photometric"][4], samples[1]["local_photometric"][1])
    out = DeviceAugmentation()(batch)
    assert "global_photometric" not in out and "local_photometric" not in out
    assert out["global_crops"].dtype == torch.float32 and out["local_crops"].shape == (9, 3, 16, 16)
    one = normalize(
        P.apply(samples[0]["local_crops"][2][None], samples[0]["local_photometric"][2:3]), IMAGENET_MEAN, IMAGENET_STD
    )
    torch.testing.assert_close(out["local_crops"][6:7], one, rtol=0, atol=0)
    assert torch.equal(out["content_masks"], batch["content_masks"])
    with pytest.raises(TypeError, match="uint8"):
        DeviceAugmentation()(out | {"global_photometric": batch["global_photometric"]})


def test_the_torch_resize_backend_cuts_the_same_crops_within_one_level():
    """``crops.resize_backend=torch``: the same boxes, flips and parameters as PIL's resize (same draws), and
    torch's antialiased bicubic is PIL's filter: pixels within one level, almost all identical."""
    img = _scene(300, 220, seed=4)
    for seed in range(3):
        torch.manual_seed(seed)
        ref = _aug("device", global_size=64, local_size=32, n_local=4)(img)
        torch.manual_seed(seed)
        out = _aug("device", global_size=64, local_size=32, n_local=4, resize_backend="torch")(img)
        for key in ("global_boxes", "local_boxes", "global_flips", "local_flips", "global_photometric"):
            assert torch.equal(out[key], ref[key]), key
        crops = list(zip(out["global_crops"] + out["local_crops"], ref["global_crops"] + ref["local_crops"]))
        diffs = torch.cat([(a.int() - b.int()).abs().flatten() for a, b in crops])
        assert all(a.shape == b.shape and a.dtype == torch.uint8 for a, b in crops)
        assert int(diffs.max()) <= 1 and float((diffs > 0).float().mean()) < 0.02


def test_the_torch_resize_backend_is_refused_in_worker_mode():
    with pytest.raises(ValueError, match="resize_backend='torch' needs photometric_on='device'"):
        _aug("worker", resize_backend="torch")
