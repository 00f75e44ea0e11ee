"""Peak memory and time of one forward+backward of a ViT-B ViTDet backbone with global attention.

Variants (all: global attention in every block, no relative position, same weights and input):

* ``d2``         detectron2's ``ViT`` (explicit ``softmax(q k^T) v``: an ``N x N`` score matrix per head and block)
* ``sdpa``       ours, :class:`transfer.vitdet.backbone.SDPAViT` (``scaled_dot_product_attention``)
* ``sdpa_ckpt``  ours with activation checkpointing (``use_act_checkpoint=True``)

Usage::

    python benchmarks/vitdet_attention.py                  # GPU if available (1024 px, fp16 autocast), else CPU 256 px
    python benchmarks/vitdet_attention.py --device cpu --size 384 --threads 1
    python benchmarks/vitdet_attention.py --json out.json

Method (each variant runs in its own fresh Python subprocess, so nothing allocated or cached by one variant
can hide in another's numbers; the parent prints a table and the ratios ours / detectron2):

* **Time**: one warm-up step, then the median wall time of ``--repeats`` steps; on GPU with
  ``torch.cuda.synchronize()`` around each step. A step is ``loss = out.float().mean(); loss.backward()``
  on a model in training mode (drop path 0, so all variants compute the same function).
* **GPU memory**: ``torch.cuda.max_memory_allocated()`` during the measured step minus the memory allocated just
  before it (weights, gradients from the warm-up, input): the peak of what the step itself needs (activations
  kept for backward, attention workspaces, gradient buffers).
* **CPU memory**: ``tracemalloc`` does not see torch's allocations, so we read the kernel's accounting of the
  process: the peak resident set size ``VmHWM`` from ``/proc/self/status``, reset to the current RSS just before
  the measured step by writing ``5`` to ``/proc/self/clear_refs``, minus the RSS at that moment. To make RSS track
  live tensors, the subprocess runs with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` (every allocation of 64 KiB or
  more is its own mapping and is returned to the kernel when freed; the default threshold adapts upwards and
  would let freed activations stay resident) and calls ``malloc_trim(0)`` before the step. The difference is the
  extra memory the step touched at its peak, in the same sense as the GPU number. Where ``clear_refs`` cannot be
  written (non-Linux, restricted containers) the peak since process start is used and a warning printed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("d2", "sdpa", "sdpa_ckpt")
ARCHS = {"vit_s": (384, 12, 6), "vit_b": (768, 12, 12), "vit_l": (1024, 24, 16)}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build_backbone(variant: str, arch: str, size: int, patch: int = 16):
    """The backbone of one variant (same constructor arguments; the caller loads identical weights)."""
    from detectron2.modeling import ViT

    from transfer.vitdet.backbone import SDPAViT
    from transfer.vitdet.plain_vit import plain_vit_kwargs

    dim, depth, heads = ARCHS[arch]
    kw = plain_vit_kwargs(img_size=size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)
    if variant == "d2":
        return ViT(**kw)
    if variant in ("sdpa", "sdpa_ckpt"):
        return SDPAViT(use_act_checkpoint=variant == "sdpa_ckpt", **kw)
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")


def worker(args) -> dict:
    """Measure one variant in this (fresh) process; returns a JSON-able dict."""
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_backbone(args.variant, args.arch, args.size).to(device).train()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    use_autocast = device.type == "cuda" and args.amp_dtype != "none"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp_dtype)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_autocast):
            out = model(x)["last_feat"]
        out.float().mean().backward()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: kernels, workspaces, gradient buffers
    sync()
    result = {"variant": args.variant, "device": str(device), "size": args.size, "batch": args.batch}
    # ---- memory of one step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync()
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        result["memory_method"] = "torch.cuda.max_memory_allocated - allocated before the step"
    else:
        _malloc_trim()
        reset = _reset_peak_rss()
        base = _proc_status_kib("VmRSS")
        step()
        result["peak_mib"] = (_proc_status_kib("VmHWM") - base) / 1024
        result["memory_method"] = "VmHWM (reset by clear_refs) - VmRSS before the step"
        if not reset:
            result["memory_method"] += " [WARNING: clear_refs not writable; peak since process start]"
    # ---- time
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    result["time_s"] = statistics.median(times)
    result["times_s"] = times
    return result


def run_variant(args, variant: str) -> dict:
    """Run one variant in a fresh subprocess (see the module docstring) and parse its JSON line."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant]
    for k in ("device", "size", "batch", "arch", "repeats", "threads", "amp_dtype"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-2000:]
        if "out of memory" in tail.lower():
            return {"variant": variant, "error": "out of memory"}
        raise RuntimeError(f"variant {variant} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> list:
    """Parse arguments; as parent run every variant and print the table, as ``--worker`` measure one."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--size", type=int, default=None, help="image side (default: 1024 on GPU, 256 on CPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--arch", default="vit_b", choices=sorted(ARCHS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--amp-dtype", default="fp16", choices=["fp16", "bf16", "none"], help="GPU autocast dtype")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None or args.size is None:
        import torch

        cuda = torch.cuda.is_available()
        args.device = args.device or ("cuda" if cuda else "cpu")
        args.size = args.size or (1024 if args.device.startswith("cuda") else 256)
    if args.worker:
        args.variant = args.worker
        print(json.dumps(worker(args)), flush=True)
        return []

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    precision = args.amp_dtype if args.device.startswith("cuda") else "fp32"
    print(
        f"ViTDet backbone {args.arch} global attention, {args.size}x{args.size} "
        f"({(args.size // 16) ** 2} tokens), batch {args.batch}, {args.device}, {precision}, "
        f"one forward+backward, median of {args.repeats}"
    )
    results = [run_variant(args, v) for v in variants]
    ref = next((r for r in results if r["variant"] == "d2" and "error" not in r), None)
    print(f"{'variant':<11} {'peak MiB':>10} {'time s':>9} {'mem/d2':>8} {'time/d2':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<11} {r['error']}")
            continue
        mem_ratio = r["peak_mib"] / ref["peak_mib"] if ref else float("nan")
        time_ratio = r["time_s"] / ref["time_s"] if ref else float("nan")
        r["mem_ratio_vs_d2"], r["time_ratio_vs_d2"] = mem_ratio, time_ratio
        print(f"{r['variant']:<11} {r['peak_mib']:>10.1f} {r['time_s']:>9.3f} {mem_ratio:>8.3f} {time_ratio:>8.3f}")
    print(f"memory: {results[0].get('memory_method', '')}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
