#!/usr/bin/env python
"""Pretraining step cost: ours vs DINOv2-dagger, framework overhead, FLOPs. Ratios measured in one run.

    python benchmarks/pretrain_step.py [--sizes tiny,vits16[,vitb16]] [--batch 2] [--steps 5] [--device auto]

For each model size it runs, each in a fresh subprocess (so peak memory is per variant):
- ``ours``: position field + content/position masking (50/50 over all global crops), three heads;
- ``dinov2``: the same code with the field off and position masking off (content masking on 50% of the crops);
- ``bare``: a bare forward+backward of the same student ViT (field on) over the same crops, no teacher, heads,
  losses, optimiser or EMA;
and prints the median step time, peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS growth over the
process's RSS before the first step), the ratios ours/dinov2 and ours/bare, the backbone's FLOPs per image
(fvcore, counting one multiply-add as 2 FLOPs, scaled_dot_product_attention included) and the achieved FLOP/s of
the bare backbone step (forward + backward ~ 3x forward FLOPs).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {
    # name: (config overrides, global size, local size)
    "tiny": (["configs/pretrain/tiny_demo.yaml"], []),
    "vits16": (["configs/pretrain/vits16_ours.yaml"], []),
    "vitb16": (["configs/pretrain/vitb16_ours.yaml"], []),
}
VARIANTS = {
    "ours": [],
    "dinov2": ["pos_field.enabled=false", "masking.mask_probability=0.5", "masking.content_fraction=1.0"],
    "bare": [],
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_batch(cfg, batch: int, device):
    import torch

    from pretrain.engine.train import build_collator

    c = cfg.crops
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(batch):
        samples.append({
            "global_crops": [torch.randn(3, c.global_size, c.global_size, generator=g) for _ in range(c.n_global)],
            "local_crops": [torch.randn(3, c.local_size, c.local_size, generator=g) for _ in range(c.n_local)],
            "global_boxes": torch.tensor([[0.1, 0.1, 0.7, 0.7]]).repeat(c.n_global, 1),
            "global_flips": torch.tensor([False, True]),
            "local_boxes": torch.tensor([[0.2, 0.2, 0.4, 0.4]]).repeat(c.n_local, 1),
            "local_flips": torch.zeros(c.n_local, dtype=torch.bool),
            "index": i, "seed": 1234 + i, "pos_info": {"s": 0.5, "k": 1.0, "tx": 0.0, "ty": 0.0, "area_A": 0.5},
        })
    out = build_collator(cfg)(samples)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in out.items()}


def backbone_flops(cfg) -> float:
    """FLOPs (2 per multiply-add) of one forward of the backbone on one global crop."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    from pretrain.ssl import SSLMetaArch

    def sdpa(inputs, outputs):
        q = inputs[0].type().sizes()
        k = inputs[1].type().sizes()
        *batch, n, d = q
        m = k[-2]
        prod = 1
        for b in batch:
            prod *= b
        return 2 * prod * n * m * d  # QK^T and AV, in multiply-adds

    model = SSLMetaArch(cfg).student["backbone"].eval()
    x = torch.randn(1, 3, cfg.crops.global_size, cfg.crops.global_size)
    fca = FlopCountAnalysis(model, (x,)).set_op_handle("aten::scaled_dot_product_attention", sdpa)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return 2.0 * fca.total()


def run_variant(size: str, variant: str, batch: int, steps: int, device_name: str) -> dict:
    import torch

    from pretrain.engine.config import load_config
    from pretrain.engine.optim import build_optimizer
    from pretrain.engine.train import autocast_context, train_step
    from pretrain.ssl import SSLMetaArch

    files, extra = SIZES[size]
    overrides = ["train.data=unused", f"train.batch_size_per_gpu={batch}", "model.drop_path_rate=0.0"]
    cfg = load_config(files, overrides + extra + VARIANTS[variant])
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          ("cpu" if device_name == "auto" else device_name))
    torch.manual_seed(0)
    model = SSLMetaArch(cfg).to(device).train()
    data = make_batch(cfg, batch, device)
    values = {"lr": 1e-4, "wd": 0.04, "momentum": 0.996, "teacher_temp": 0.04, "last_layer_lr": 1e-4}
    if variant == "bare":
        backbone = model.student["backbone"]
        params = [p for p in backbone.parameters()]
        del model  # nothing but the ViT and its crops

        def step():
            with autocast_context(cfg, device):
                g = backbone(data["global_crops"], data["global_boxes"], data["global_flips"])
                loc = backbone(data["local_crops"], data["local_boxes"], data["local_flips"])
                loss = g["patch"].float().mean() + g["cls"].float().mean() + loc["cls"].float().mean()
            for p in params:
                p.grad = None
            loss.backward()
    else:
        optimizer = build_optimizer(model.student, cfg)

        def step():
            train_step(model, model, optimizer, data, values, cfg, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocations, kernels)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    times = []
    for _ in range(steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"size": size, "variant": variant, "step_s": statistics.median(times), "peak_bytes": max(peak, 0),
            "device": str(device), "images": batch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,vits16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(*args.child, args.batch, args.steps, args.device)))
        return 0
    import torch

    from pretrain.engine.config import load_config

    print(f"torch {torch.__version__}, device {args.device}, cuda available: {torch.cuda.is_available()}, "
          f"threads {torch.get_num_threads()}, batch {args.batch} images per step, median of {args.steps} steps")
    print(f"{'size':8s} {'variant':8s} {'step (s)':>9s} {'peak mem (MiB)':>15s}")
    for size in args.sizes.split(","):
        res = {}
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--child", size, variant, "--batch", str(args.batch),
                                  "--steps", str(args.steps), "--device", args.device],
                                 capture_output=True, text=True, check=True)
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            r = res[variant]
            print(f"{size:8s} {variant:8s} {r['step_s']:9.3f} {r['peak_bytes'] / 2**20:15.1f}")
        o, d, b = res["ours"], res["dinov2"], res["bare"]
        cfg = load_config(SIZES[size][0], ["train.data=unused"])
        flops = backbone_flops(cfg)
        c = cfg.crops
        crops_equiv = c.n_global + c.n_local * (c.local_size / c.global_size) ** 2
        achieved = 3 * flops * crops_equiv * args.batch / b["step_s"]
        print(f"{size}: ours/dinov2 time {o['step_s'] / d['step_s']:.3f}x, memory "
              f"{o['peak_bytes'] / max(d['peak_bytes'], 1):.3f}x | full step/bare fwd+bwd time "
              f"{o['step_s'] / b['step_s']:.3f}x | backbone {flops / 1e9:.2f} GFLOPs per {c.global_size}px image, "
              f"bare step achieves {achieved / 1e9:.1f} GFLOP/s (local crops counted by area)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
