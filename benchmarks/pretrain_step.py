#!/usr/bin/env python
"""Pretraining step cost: ours vs DINOv2-dagger, framework overhead, FLOPs. Ratios measured in one run.

    python benchmarks/pretrain_step.py [--sizes tiny,vits16[,vitb16]] [--batch 2] [--steps 8] [--device auto]
                                       [--memory subprocess|inprocess] [--peak-tflops T] [--json OUT.json]

Variants, all built from the same code and fed the same collated batch:
- ``ours``: position field + content/position masking (50/50 over all global crops), three heads;
- ``dinov2``: DINOv2-dagger as configured in ``configs/pretrain/vits16_dinov2.yaml``: field off, position masking
  off, content masking on 50% of the global crops (DINOv2's recipe), two heads;
- ``dinov2_allmask``: field off, position masking off, every global crop content-masked (Table 5b's
  "content 1.0" row with the field off): the same number of masked tokens as ``ours``, so the difference to
  ``ours`` is the position field and the separate position head alone;
- ``bare``: a bare forward+backward of ``ours``' student ViT over the same crops (no teacher, heads, losses,
  optimiser or EMA).

Timing: all variants live in one process and their steps are interleaved round by round (rotating the order),
so drifts of a shared machine hit every variant alike; the median per variant is reported, and each ratio also as
the median (with quartiles) of its per-round ratios, the two steps of a ratio having run within one round.
FLOPs per step: ``torch.utils.flop_counter.FlopCounterMode`` over one whole step (forward and backward matmuls
and attention; elementwise work is not counted), so ``time ratio / FLOP ratio`` is the cost per FLOP of the full
step relative to the bare one, i.e. the framework overhead proper. Peak memory: each variant in a fresh
subprocess (CUDA: ``max_memory_allocated``; CPU: peak RSS growth over the RSS before the first step). The
backbone's FLOPs per image come from fvcore (one multiply-add = 2 FLOPs, ``scaled_dot_product_attention`` included).
``--memory inprocess`` (CUDA only, the GPU suite's choice): each variant's peak in the timing process, as
``max_memory_allocated`` during one step minus the memory allocated before it, so the other variants' weights do
not count. Images/s is the batch over the median step; MFU is counted FLOPs per second over ``--peak-tflops``
(default: the dense bf16 peak of the GPU when its name is known, e.g. 989 TFLOP/s for H100 / H200 SXM; precision
bf16 on CUDA, ``train.precision=auto``).
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
    "tiny": ["configs/pretrain/tiny_demo.yaml"],
    "vits16": ["configs/pretrain/vits16_ours.yaml"],
    "vitb16": ["configs/pretrain/vitb16_ours.yaml"],
}
VARIANTS = {
    "ours": [],
    "dinov2": ["pos_field.enabled=false", "masking.mask_probability=0.5", "masking.content_fraction=1.0"],
    "dinov2_allmask": ["pos_field.enabled=false", "masking.mask_probability=1.0", "masking.content_fraction=1.0"],
    "bare": [],
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_batch(cfg, batch: int, device):
    import torch

    from pretrain.methods import method_class

    c = cfg.crops
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(batch):
        samples.append(
            {
                "global_crops": [torch.randn(3, c.global_size, c.global_size, generator=g) for _ in range(c.n_global)],
                "local_crops": [torch.randn(3, c.local_size, c.local_size, generator=g) for _ in range(c.n_local)],
                "global_boxes": torch.tensor([[0.1, 0.1, 0.7, 0.7]]).repeat(c.n_global, 1),
                "global_flips": torch.tensor([False, True]),
                "local_boxes": torch.tensor([[0.2, 0.2, 0.4, 0.4]]).repeat(c.n_local, 1),
                "local_flips": torch.zeros(c.n_local, dtype=torch.bool),
                "index": i,
                "seed": 1234 + i,
            }
        )
    out = method_class(cfg.method).build_collator(cfg)(samples)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in out.items()}


def backbone_flops(cfg) -> float:
    """FLOPs (2 per multiply-add) of one forward of the backbone on one global crop."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    from pretrain.methods import IntertwinedDistillation

    def sdpa(inputs, outputs):
        q = inputs[0].type().sizes()
        k = inputs[1].type().sizes()
        *batch, n, d = q
        m = k[-2]
        prod = 1
        for b in batch:
            prod *= b
        return 2 * prod * n * m * d  # QK^T and AV, in multiply-adds

    model = IntertwinedDistillation(cfg).student["backbone"].eval()
    x = torch.randn(1, 3, cfg.crops.global_size, cfg.crops.global_size)
    fca = FlopCountAnalysis(model, (x,)).set_op_handle("aten::scaled_dot_product_attention", sdpa)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return 2.0 * fca.total()


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_variant(size: str, variant: str, batch: int, device):
    """Returns ``(step function, number of masked tokens)`` for one variant."""
    import torch

    from pretrain.engine.config import load_config
    from pretrain.engine.optim import build_optimizer
    from pretrain.engine.train import autocast_context, train_step
    from pretrain.methods import IntertwinedDistillation

    overrides = ["train.data=unused", f"train.batch_size_per_gpu={batch}", "model.drop_path_rate=0.0"]
    cfg = load_config(SIZES[size], overrides + VARIANTS[variant])
    torch.manual_seed(0)
    model = IntertwinedDistillation(cfg).to(device).train()
    data = make_batch(cfg, batch, device)
    masked = int(data["content_masks"].sum()) + int(data["pos_masks"].sum())
    values = {"lr": 1e-4, "wd": 0.04, "momentum": 0.996, "teacher_temp": 0.04, "last_layer_lr": 1e-4}
    if variant == "bare":
        backbone = model.student["backbone"]
        params = list(backbone.parameters())
        del model  # nothing but the ViT and its crops

        def step():
            with autocast_context(cfg, device):
                g = backbone(data["global_crops"], data["global_boxes"], data["global_flips"])
                loc = backbone(data["local_crops"], data["local_boxes"], data["local_flips"])
                loss = g["patch"].float().mean() + g["cls"].float().mean() + loc["cls"].float().mean()
            for p in params:
                p.grad = None
            loss.backward()

        return step, 0
    optimizer = build_optimizer(model.student, cfg)

    def step():
        train_step(model, model, optimizer, data, values, cfg, device)

    return step, masked


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _cuda_step_peak(step, device) -> int:
    """Bytes one step allocates at its peak beyond what was allocated before it (CUDA)."""
    import torch

    _sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    return max(torch.cuda.max_memory_allocated(device) - base, 0)


#: Dense bf16 peak TFLOP/s by GPU name (vendor data sheets), for MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device_name: str) -> float | None:
    import torch

    if not (device_name in ("auto", "cuda") or device_name.startswith("cuda")) or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def time_variants(size: str, batch: int, steps: int, device_name: str, inprocess_memory: bool = False) -> dict:
    """All variants in this process, steps interleaved round by round. Median seconds, FLOPs per step."""
    from torch.utils.flop_counter import FlopCounterMode

    device = pick_device(device_name)
    steps_fn, out = {}, {}
    for v in VARIANTS:
        steps_fn[v], masked = build_variant(size, v, batch, device)
        steps_fn[v]()  # warm-up (allocations, kernels)
        counter = FlopCounterMode(display=False)
        with counter:
            steps_fn[v]()
        out[v] = {"masked_tokens": masked, "flops": float(counter.get_total_flops()), "times": []}
    names = list(VARIANTS)
    if device.type == "cuda" and inprocess_memory:
        for v in names:
            out[v]["peak_bytes"] = _cuda_step_peak(steps_fn[v], device)
    for r in range(steps):
        for v in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            t = time.perf_counter()
            steps_fn[v]()
            _sync(device)
            out[v]["times"].append(time.perf_counter() - t)
    for v in names:
        t = sorted(out[v]["times"])
        out[v]["step_s"] = statistics.median(t)
        out[v]["spread"] = (t[0], t[-1])
    return {"device": str(device), "variants": out}


def peak_memory(size: str, variant: str, batch: int, steps: int, device_name: str) -> dict:
    import torch

    device = pick_device(device_name)
    step, _ = build_variant(size, variant, batch, device)
    step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    for _ in range(steps):
        step()
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"peak_bytes": max(peak, 0)}


def paired_ratio(a_times, b_times) -> tuple[float, float, float]:
    """Median and quartiles of the per-round ratios ``a_r / b_r`` (both steps of round ``r`` ran within one round,
    so a drift of the machine between rounds cancels in each ratio)."""
    ratios = sorted(a / b for a, b in zip(a_times, b_times))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q1, q3


def _child(batch: int, steps: int, device: str, *extra) -> dict:
    cmd = [sys.executable, __file__, "--batch", str(batch), "--steps", str(steps), "--device", device, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"benchmark child failed: {' '.join(extra)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", default="tiny,vits16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--memory", choices=("subprocess", "inprocess"), default="subprocess")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: known GPUs' bf16 peak)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--timing-child", metavar="SIZE", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timing_child:
        inprocess = args.memory == "inprocess"
        print(json.dumps(time_variants(args.timing_child, args.batch, args.steps, args.device, inprocess)))
        return 0
    if args.memory_child:
        print(json.dumps(peak_memory(*args.memory_child, args.batch, args.steps, args.device)))
        return 0
    for size in args.sizes.split(","):
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    import torch

    from pretrain.engine.config import load_config

    inprocess = args.memory == "inprocess"
    peak = args.peak_tflops or peak_tflops(args.device)
    memory_how = "in the timing process (CUDA)" if inprocess else f"over {args.memory_steps} steps in a fresh process"
    print(
        f"torch {torch.__version__}, device {args.device}, cuda available: {torch.cuda.is_available()}, "
        f"threads {torch.get_num_threads()}, batch {args.batch} images per step, median of {args.steps} "
        f"interleaved steps; memory {memory_how} per variant; MFU against "
        + (f"{peak:g} TFLOP/s" if peak else "no known peak (pass --peak-tflops)")
    )
    results = {}
    for size in args.sizes.split(","):
        t0 = time.perf_counter()
        timing = _child(args.batch, args.steps, args.device, "--timing-child", size, "--memory", args.memory)
        res = timing["variants"]
        if inprocess:
            mem = {v: res[v].get("peak_bytes", 0) for v in VARIANTS}
        else:
            mem = {
                v: _child(args.batch, args.memory_steps, args.device, "--memory-child", size, v)["peak_bytes"]
                for v in VARIANTS
            }
        for v, r in res.items():
            r["peak_bytes"], r["images_per_s"] = mem[v], args.batch / r["step_s"]
            r["mfu"] = r["flops"] / r["step_s"] / (peak * 1e12) if peak else None
        cfg = load_config(SIZES[size], ["train.data=unused"])
        timing["backbone_gflops"] = backbone_flops(cfg) / 1e9
        results[size] = timing
        report_size(size, timing, time.perf_counter() - t0, cfg.crops.global_size)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "steps": args.steps, "peak_tflops": peak, "sizes": results}, f, indent=1)
    return 0


def report_size(size: str, timing: dict, seconds: float, global_size: int) -> None:
    """The table and the ratios of one model size."""
    res = timing["variants"]
    print(f"\n[{size}] on {timing['device']} ({seconds:.0f} s)")
    print(
        f"{'variant':15s} {'masked tok':>10s} {'step (s)':>9s} {'min-max (s)':>13s} {'img/s':>8s} {'GFLOP/step':>11s} "
        f"{'GFLOP/s':>8s} {'MFU':>6s} {'peak MiB':>9s}"
    )
    for v, r in res.items():
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "     -"
        print(
            f"{v:15s} {r['masked_tokens']:10d} {r['step_s']:9.3f} {r['spread'][0]:6.3f}-{r['spread'][1]:6.3f} "
            f"{r['images_per_s']:8.1f} {r['flops'] / 1e9:11.2f} {r['flops'] / r['step_s'] / 1e9:8.1f} {mfu} "
            f"{r['peak_bytes'] / 2**20:9.1f}"
        )
    o, b = res["ours"], res["bare"]

    def paired(ref):
        med, q1, q3 = paired_ratio(o["times"], res[ref]["times"])
        return f"(per round: median {med:.3f}x, quartiles {q1:.3f}-{q3:.3f}x)"

    for ref in ("dinov2", "dinov2_allmask"):
        d = res[ref]
        t_ratio, f_ratio = o["step_s"] / d["step_s"], o["flops"] / d["flops"]
        print(
            f"ours/{ref}: time {t_ratio:.3f}x {paired(ref)}, FLOPs {f_ratio:.3f}x, time per FLOP "
            f"{t_ratio / f_ratio:.3f}x, memory {o['peak_bytes'] / max(d['peak_bytes'], 1):.3f}x"
        )
    t_ratio, f_ratio = o["step_s"] / b["step_s"], o["flops"] / b["flops"]
    print(
        f"full step/bare fwd+bwd: time {t_ratio:.3f}x {paired('bare')}, FLOPs {f_ratio:.3f}x, "
        f"time per FLOP (framework overhead) {t_ratio / f_ratio:.3f}x"
    )
    print(f"backbone (fvcore): {timing['backbone_gflops']:.2f} GFLOPs per {global_size} px image (forward)")


if __name__ == "__main__":
    sys.exit(main())
