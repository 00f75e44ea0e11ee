#!/usr/bin/env python
"""Data pipeline throughput per CPU core: ours (photometric in the worker / on the device) vs DINOv2's settings.

    python benchmarks/data_pipeline.py [--images 48] [--size 500x375] [--batch 16] [--rounds 5] [--device auto]
                                       [--loader-workers N] [--json OUT.json] [--tiny]

Writes ``--images`` generated JPEGs (smooth colour fields, shapes and noise; quality 90, ~100 KB at 500 x 375 like
an ImageNet photo), then, in this one process on one thread (``torch.set_num_threads(1)``), so that every figure
is images/s of one core:

- ``dinov2``: a reference built from torchvision with DINOv2's settings: PIL decode, per crop
  ``RandomResizedCrop`` (bicubic; 2 x 224 at scale 0.32-1, 8 x 96 at 0.05-0.32), ``RandomHorizontalFlip``,
  ``RandomApply(ColorJitter(0.4, 0.4, 0.2, 0.1), 0.8)``, ``RandomGrayscale(0.2)``, ``GaussianBlur(9, (0.1, 2))``
  with DINOv2's effective probabilities (0.0 / 0.9 / 0.5), ``RandomSolarize(128, 0.2)`` on crop 2, ``ToTensor``,
  ``Normalize``; collate: stack, and block masks on half the global crops (ratios 0.1-0.5);
- ``worker``: ours, ``crops.photometric_on=worker`` (``SSLDataset`` + ``MaskingCollator``, our default masking);
- ``device``: ours, ``crops.photometric_on=device``: the worker part only (decode, boxes, crop, flip, resize,
  uint8, parameters; reduced JPEG decode where it applies) + collate;
- ``device_torch``: the same with ``crops.resize_backend=torch`` (torch's uint8 antialiased bicubic instead of
  PIL's for the crop-and-resize).

The four are interleaved batch by batch (rotating their order each round) and each is timed over all images per
round; the median round gives images/s. Then the device stage's cost per image (``DeviceAugmentation`` on a
collated batch: photometric + normalise), on this CPU with one thread and on CUDA when present, and the
end-to-end single-core rate of the device path with its device stage run on the same core. Also: PIL decode vs
``torchvision.io.decode_jpeg`` vs PIL's 1/2 draft decode, and the pixel difference of crops rendered from a
reduced decode against the full decode (same boxes), on 2000 x 1500 images where every crop is downscaled >= 2x.
``--loader-workers N``: DataLoader throughput of the device path with N workers (pinned memory on CUDA), the
device stage included, as the training loop would see it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain.data.collate import MaskingCollator  # noqa: E402
from pretrain.data.dataset import SSLDataset  # noqa: E402
from pretrain.data.device_stage import DeviceAugmentation  # noqa: E402
from pretrain.data.folder import ImageFolderDataset  # noqa: E402
from pretrain.data.masking import BoxMaskGenerator  # noqa: E402
from pretrain.data.multicrop import CROP_RATIO, MultiCropAugmentation  # noqa: E402
from pretrain.data.normalization import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from pretrain.data.position_aug import PositionScaleAugmentation  # noqa: E402

FULL = {"global_size": 224, "local_size": 96, "n_local": 8, "patch": 16}
TINY = {"global_size": 32, "local_size": 16, "n_local": 2, "patch": 16}


def write_images(root: str, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    """``n`` JPEGs of smooth colour fields with a few rectangles and noise (quality 90)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        img = np.zeros((height, width, 3), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(1, 6, 3)
            img[..., c] = 128 + 90 * np.sin(fx * x / width * 6.28 + ph) * np.cos(fy * y / height * 6.28)
        for _ in range(6):
            x0, y0 = rng.integers(0, width), rng.integers(0, height)
            img[y0 : y0 + rng.integers(10, height // 2), x0 : x0 + rng.integers(10, width // 2)] = rng.uniform(
                0, 255, 3
            )
        img += rng.normal(0, 14, img.shape)
        path = os.path.join(root, f"{i:05d}.jpg")
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------- the reference
class DINOv2Reference:
    """DINOv2's augmentation and collate, from torchvision's PIL transforms (module docstring)."""

    def __init__(self, sizes: dict):
        from torchvision import transforms as T

        bicubic = T.InterpolationMode.BICUBIC
        color = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)])
        norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

        def blur(p):
            return T.RandomApply([T.GaussianBlur(9, sigma=(0.1, 2.0))], p=p)

        def geometric(size, scale):
            return T.Compose(
                [
                    T.RandomResizedCrop(size, scale=scale, ratio=CROP_RATIO, interpolation=bicubic),
                    T.RandomHorizontalFlip(0.5),
                ]
            )

        g, s = geometric(sizes["global_size"], (0.32, 1.0)), geometric(sizes["local_size"], (0.05, 0.32))
        self.global1 = T.Compose([g, color, blur(0.0), norm])
        self.global2 = T.Compose([g, color, blur(0.9), T.RandomSolarize(128, p=0.2), norm])
        self.local = T.Compose([s, color, blur(0.5), norm])
        self.n_local = sizes["n_local"]
        self.grid = sizes["global_size"] // sizes["patch"]
        self.masks = BoxMaskGenerator((self.grid, self.grid))

    def sample(self, path: str) -> dict:
        img = Image.open(path).convert("RGB")
        return {
            "global_crops": [self.global1(img), self.global2(img)],
            "local_crops": [self.local(img) for _ in range(self.n_local)],
        }

    def collate(self, samples: list[dict], generator: torch.Generator) -> dict:
        """Crop-major stacks; half of the global crops block-masked at ratios stratified over 0.1-0.5."""
        globals_ = torch.stack([s["global_crops"][c] for c in range(2) for s in samples])
        locals_ = torch.stack([s["local_crops"][c] for c in range(self.n_local) for s in samples])
        n, patches = len(globals_), self.grid * self.grid
        masks = torch.zeros(n, patches, dtype=torch.bool)
        masked = n // 2
        probs = np.linspace(0.1, 0.5, masked + 1)
        for i in range(masked):
            ratio = probs[i] + (probs[i + 1] - probs[i]) * torch.rand(1, generator=generator).item()
            masks[i] = self.masks(max(1, int(patches * ratio)), generator).flatten()
        return {
            "global_crops": globals_,
            "local_crops": locals_,
            "masks": masks[torch.randperm(n, generator=generator)],
        }


# ------------------------------------------------------------------------------------------- ours
#: Our pipelines: name -> (crops.photometric_on, crops.resize_backend).
OURS = {"worker": ("worker", "pil"), "device": ("device", "pil"), "device_torch": ("device", "torch")}


def ours(root: str, sizes: dict, mode: str, resize_backend: str = "pil"):
    """``(dataset, collator)`` of our intertwined method's data path with ``photometric_on=mode`` and
    ``crops.resize_backend``."""
    aug = MultiCropAugmentation(
        global_size=sizes["global_size"],
        local_size=sizes["local_size"],
        n_local=sizes["n_local"],
        photometric_on=mode,
        reduced_decode=True,
        resize_backend=resize_backend,
    )
    dataset = SSLDataset(ImageFolderDataset(root), aug, PositionScaleAugmentation("beta", 0.2, 1.0, (2.0, 5.0)))
    grid = sizes["global_size"] // sizes["patch"]
    return dataset, MaskingCollator((grid, grid), (0.1, 0.5), 1.0, 0.5)


def time_paths(root: str, paths: list[str], sizes: dict, batch: int, rounds: int) -> dict:
    """Median seconds per round over all images, per pipeline; pipelines interleaved batch by batch."""
    ref = DINOv2Reference(sizes)
    gen = torch.Generator().manual_seed(0)
    pipes = {"dinov2": lambda idx: ref.collate([ref.sample(paths[i]) for i in idx], gen)}
    for name, (mode, backend) in OURS.items():
        ds, coll = ours(root, sizes, mode, backend)
        pipes[name] = lambda idx, ds=ds, coll=coll: coll([ds[i] for i in idx])
    for fn in pipes.values():
        fn(range(min(batch, len(paths))))  # warm-up
    names = list(pipes)
    times = {n: [] for n in names}
    batches = [range(i, min(i + batch, len(paths))) for i in range(0, len(paths), batch)]
    for r in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        for b, idx in enumerate(batches):
            k = (r + b) % len(names)
            for name in names[k:] + names[:k]:
                t = time.perf_counter()
                pipes[name](idx)
                spent[name] += time.perf_counter() - t
        for name in names:
            times[name].append(spent[name])
    return {n: {"round_s": times[n], "images_per_s": len(paths) / statistics.median(times[n])} for n in names}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_stage_cost(root: str, sizes: dict, batch: int, device: torch.device, repeats: int) -> dict:
    """Seconds per image of ``DeviceAugmentation`` on a collated device-mode batch of ``batch`` images."""
    ds, coll = ours(root, sizes, "device")
    samples = [ds[i % len(ds)] for i in range(batch)]
    data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in coll(samples).items()}
    stage = DeviceAugmentation()
    out = stage(data)  # warm-up (kernels, allocator)
    check = {}
    if device.type != "cpu":  # the same batch on the CPU: the device's kernels must give the same pixels
        ref = stage({k: v.cpu() if torch.is_tensor(v) else v for k, v in data.items()})
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        for g in ("global_crops", "local_crops"):
            check[f"{g}_max_levels"] = float(((out[g].cpu() - ref[g]).abs() * std * 255).max())
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        stage(data)
        _sync(device)
        times.append(time.perf_counter() - t)
    return {"device": str(device), "batch": batch, "s_per_image": statistics.median(times) / batch, **check}


def decode_costs(paths: list[str], repeats: int = 3) -> dict:
    """Milliseconds per image: PIL full decode, torchvision.io.decode_jpeg, PIL 1/2 draft decode."""
    import torchvision

    blobs = [open(p, "rb").read() for p in paths]

    def pil(b):
        Image.open(io.BytesIO(b)).convert("RGB")

    def tv(b):
        torchvision.io.decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))

    def draft(b):
        im = Image.open(io.BytesIO(b))
        im.draft("RGB", (im.width // 2, im.height // 2))
        im.convert("RGB")

    out = {}
    for name, fn in (("pil", pil), ("torchvision", tv), ("pil_draft_half", draft)):
        best = []
        for _ in range(repeats):
            t = time.perf_counter()
            for b in blobs:
                fn(b)
            best.append(time.perf_counter() - t)
        out[name] = 1000 * min(best) / len(blobs)
    return out


def draft_difference(n: int, sizes: dict, width: int, height: int) -> dict:
    """Crops of the same plans rendered from the full decode and from the reduced decode: pixel difference, and the
    worker time of each way, on ``n`` images of ``width`` x ``height``."""
    with tempfile.TemporaryDirectory() as root:
        write_images(root, n, width, height, seed=1)
        images = ImageFolderDataset(root)
        aug = MultiCropAugmentation(
            global_size=sizes["global_size"],
            local_size=sizes["local_size"],
            n_local=sizes["n_local"],
            photometric_on="device",
            reduced_decode=True,
        )
        torch.manual_seed(0)
        diffs, scales, t_full, t_draft = [], [], 0.0, 0.0
        for i in range(n):
            plan = aug.plan((width, height))
            s = aug.draft_scale(plan)
            scales.append(s)
            t = time.perf_counter()
            full = aug.render(images.load(i), plan)
            t_full += time.perf_counter() - t
            t = time.perf_counter()
            small = aug.render(images.load(i, draft=lambda size, s=s: s), plan)
            t_draft += time.perf_counter() - t
            for a, b in zip(full["global_crops"] + full["local_crops"], small["global_crops"] + small["local_crops"]):
                diffs.append((a.float() - b.float()).abs().flatten())
        d = torch.cat(diffs)
        return {
            "size": f"{width}x{height}",
            "images": n,
            "scales": sorted(set(scales)),
            "mean_abs": float(d.mean()),
            "p99_abs": float(d.quantile(0.99)) if d.numel() < 16_000_000 else float("nan"),
            "max_abs": float(d.max()),
            "full_ms": 1000 * t_full / n,
            "draft_ms": 1000 * t_draft / n,
        }


def drafted_share(root: str, sizes: dict, n: int) -> float:
    """Share of images whose plan allows a reduced decode (device path, these images)."""
    ds, _ = ours(root, sizes, "device")
    images = ds.images
    torch.manual_seed(0)
    return sum(ds.multicrop.draft_scale(ds.multicrop.plan(images.load(i).size)) > 1 for i in range(n)) / n


def loader_rate(root: str, sizes: dict, batch: int, workers: int, batches: int, device: torch.device) -> dict:
    """Images/s of a DataLoader over the device path with ``workers`` workers, the device stage included."""
    ds, coll = ours(root, sizes, "device")
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch * (batches + 2))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=coll,
        pin_memory=device.type == "cuda",
        drop_last=True,
        prefetch_factor=4 if workers else None,
    )
    stage = DeviceAugmentation()
    it = iter(loader)
    for _ in range(2):  # workers start, first batches
        next(it)
    _sync(device)
    t = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        stage({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()})
    _sync(device)
    seconds = time.perf_counter() - t
    return {"workers": workers, "batch": batch, "images_per_s": batch * batches / seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="auto", help="where the device stage runs besides this CPU: auto, cpu, cuda")
    ap.add_argument("--device-batch", type=int, default=64)
    ap.add_argument("--loader-workers", type=int, default=0, help="also measure a DataLoader with this many workers")
    ap.add_argument("--loader-batches", type=int, default=20)
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke run for tests)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sizes = TINY if args.tiny else FULL
    width, height = (int(v) for v in args.size.split("x"))
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    result = {"torch": torch.__version__, "sizes": sizes, "image_size": args.size, "images": args.images}
    with tempfile.TemporaryDirectory() as root:
        paths = write_images(root, args.images, width, height)
        kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        print(
            f"{args.images} JPEGs of {args.size} ({kb:.0f} KB mean); crops 2 x {sizes['global_size']} + "
            f"{sizes['n_local']} x {sizes['local_size']}; batch {args.batch}; {args.rounds} rounds; 1 thread"
        )
        paths_res = time_paths(root, paths, sizes, args.batch, args.rounds)
        result["paths"] = paths_res
        cpu = device_stage_cost(root, sizes, min(args.device_batch, 16), torch.device("cpu"), 3)
        result["device_stage"] = {"cpu": cpu}
        if device.type != "cpu":
            result["device_stage"][device.type] = device_stage_cost(root, sizes, args.device_batch, device, 10)
        result["decode_ms"] = decode_costs(paths[: min(len(paths), 32)])
        result["drafted_share"] = drafted_share(root, sizes, min(len(paths), 32))
        if args.loader_workers:
            result["loader"] = loader_rate(
                root, sizes, args.device_batch, args.loader_workers, args.loader_batches, device
            )
    big = (200, 150) if args.tiny else (2000, 1500)
    result["draft"] = draft_difference(2 if args.tiny else 8, sizes, *big)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def report(r: dict) -> None:
    p = r["paths"]
    ref = p["dinov2"]["images_per_s"]
    print(f"\n{'pipeline':34s} {'images/s/core':>13s} {'vs DINOv2':>9s}")
    for name, label in (
        ("dinov2", "DINOv2 settings (torchvision PIL)"),
        ("worker", "ours, photometric_on=worker"),
        ("device", "ours, photometric_on=device"),
        ("device_torch", "  + crops.resize_backend=torch"),
    ):
        print(f"{label:34s} {p[name]['images_per_s']:13.1f} {p[name]['images_per_s'] / ref:8.2f}x")
    cpu = r["device_stage"]["cpu"]["s_per_image"]
    e2e = 1.0 / (1.0 / p["device"]["images_per_s"] + cpu)
    print(
        f"device stage on this CPU (1 thread): {1000 * cpu:.2f} ms/image; worker + device stage on one core: "
        f"{e2e:.1f} images/s ({e2e / ref:.2f}x DINOv2's)"
    )
    for kind, v in r["device_stage"].items():
        if kind != "cpu":
            print(
                f"device stage on {v['device']} (batch {v['batch']}): {1e6 * v['s_per_image']:.1f} us/image, "
                f"{1 / v['s_per_image']:.0f} images/s; max |{kind} - cpu| global "
                f"{v['global_crops_max_levels']:.2f}, local {v['local_crops_max_levels']:.2f} levels"
            )
    d = r["decode_ms"]
    print(
        f"decode ms/image: PIL {d['pil']:.2f}, torchvision.io.decode_jpeg {d['torchvision']:.2f}, "
        f"PIL 1/2 draft {d['pil_draft_half']:.2f}; share of these images with a reduced decode: "
        f"{r['drafted_share']:.2f}"
    )
    g = r["draft"]
    print(
        f"reduced decode on {g['images']} images of {g['size']} (scales {g['scales']}): worker {g['full_ms']:.1f} -> "
        f"{g['draft_ms']:.1f} ms/image; crops vs the full decode: mean |diff| {g['mean_abs']:.3f}, p99 "
        f"{g['p99_abs']:.0f}, max {g['max_abs']:.0f} levels"
    )
    if "loader" in r:
        lo = r["loader"]
        print(
            f"DataLoader, device path, {lo['workers']} workers, batch {lo['batch']}, device stage included: "
            f"{lo['images_per_s']:.0f} images/s ({lo['images_per_s'] / lo['workers']:.0f} per worker)"
        )


if __name__ == "__main__":
    sys.exit(main())
