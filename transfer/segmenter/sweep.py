"""The paper's ADE20K protocol as a command: sweep, seeds, resume, summary (docs/protocols.md §3, appendix B.3).

    python -m transfer.segmenter.sweep CONFIG CKPT [--sweep] [--seeds N] [--lrs a,b,..] [--wds a,b]
        [--work-dir DIR] [--summary-only] [--keep-going] [key=value ...]

(``tools/train_ade.sh`` is the user-facing wrapper.) Runs, one after the other:

* without ``--sweep``: the config's (lr, wd), or the grid given by ``--lrs`` / ``--wds``;
* with ``--sweep``: weight decay {1e-2, 1e-4} x lr {8e-5, 3e-5, 1e-5, 8e-6} (``--lrs`` / ``--wds`` override);
* each point with seeds 0..N-1 (``--seeds``, default 1; the paper averages 2).

Each run trains in ``<work_dir>/lr{lr}_wd{wd}/seed{s}``. A run whose ``metrics_final.json`` exists is
skipped; a run with a ``last_checkpoint`` is resumed (``--resume``). Trailing ``key=value`` pairs go to
``--cfg-options`` of every run. Launch: ``GPUS`` processes per node (default 1), ``NNODES`` nodes
(default 1), ``NODE_RANK``, ``MASTER_ADDR`` (127.0.0.1), ``MASTER_PORT`` (29500): ``torchrun`` when
GPUS > 1 or NNODES > 1, otherwise a plain ``python``. For several nodes, start the same command on every node
and keep the work dir on a shared file system (the skip/resume decisions read it).

At the end (also with ``--summary-only``) ``<work_dir>/summary.md`` and ``summary.csv`` list per point the
mean and standard deviation over seeds (population std, numpy's default ``ddof=0``; 0 for one seed) of
mIoU, aAcc and mAcc with the number of finished seeds, and mark the best point (highest mean mIoU): the
number the paper reports. A sweep that launched at least one run also writes one ``segmenter_sweep`` record of
that aggregate to the results database (``resultsdb.hooks.record_sweep``; each run records ``segmenter`` itself).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence

from transfer.segmenter.train import METRIC_KEYS, METRICS_FILE

SWEEP_LRS = (8e-5, 3e-5, 1e-5, 8e-6)
SWEEP_WDS = (1e-2, 1e-4)


# ----------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------
def point_name(lr: float, wd: float) -> str:
    """Folder name of a sweep point, e.g. ``lr3e-05_wd0.01``."""
    return f"lr{lr:g}_wd{wd:g}"


def run_dir(work_dir: str, lr: float, wd: float, seed: int) -> str:
    """Work dir of one run."""
    return os.path.join(work_dir, point_name(lr, wd), f"seed{seed}")


def plan_runs(lrs: Sequence[float], wds: Sequence[float], num_seeds: int) -> list[tuple[float, float, int]]:
    """All (lr, wd, seed) triples, weight decay outermost, seeds innermost."""
    if num_seeds < 1:
        raise ValueError("--seeds must be >= 1")
    return [(lr, wd, s) for wd in wds for lr in lrs for s in range(num_seeds)]


def is_finished(path: str) -> bool:
    """A run is finished once its metrics file exists."""
    return os.path.isfile(os.path.join(path, METRICS_FILE))


def can_resume(path: str) -> bool:
    """A run can be resumed when MMEngine left a ``last_checkpoint`` pointer to an existing file."""
    pointer = os.path.join(path, "last_checkpoint")
    if not os.path.isfile(pointer):
        return False
    with open(pointer) as f:
        return os.path.isfile(f.read().strip())


# ----------------------------------------------------------------------------------------------------------
# launching one run
# ----------------------------------------------------------------------------------------------------------
def launch_prefix(env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """Command prefix that starts ``-m transfer.segmenter.train`` and the ``--launcher`` value to pass."""
    env = os.environ if env is None else env
    gpus = int(env.get("GPUS", "1") or 1)
    nnodes = int(env.get("NNODES", "1") or 1)
    if gpus > 1 or nnodes > 1:
        # one node: pretrain.launch, torchrun with its rendezvous store on loopback only (pretrain/launch.py)
        return [
            sys.executable,
            "-m",
            "pretrain.launch" if nnodes == 1 else "torch.distributed.run",
            f"--nnodes={nnodes}",
            f"--node_rank={env.get('NODE_RANK', '0')}",
            f"--master_addr={env.get('MASTER_ADDR', '127.0.0.1')}",
            f"--master_port={env.get('MASTER_PORT', '29500')}",
            f"--nproc_per_node={gpus}",
            "-m",
            "transfer.segmenter.train",
        ], "pytorch"
    return [sys.executable, "-m", "transfer.segmenter.train"], "none"


def build_command(
    config: str,
    ckpt: str,
    out_dir: str,
    lr: float,
    wd: float,
    seed: int,
    cfg_options: Sequence[str] = (),
    resume: bool = False,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The full command line of one run."""
    prefix, launcher = launch_prefix(env)
    cmd = prefix + [
        config,
        "--init",
        ckpt,
        "--work-dir",
        out_dir,
        "--lr",
        repr(float(lr)),
        "--wd",
        repr(float(wd)),
        "--seed",
        str(seed),
        "--launcher",
        launcher,
    ]
    if resume:
        cmd.append("--resume")
    if cfg_options:
        cmd += ["--cfg-options", *cfg_options]
    return cmd


def run_one(cmd: list[str], log_path: str) -> int:
    """Run one training command, teeing its output into ``log_path``. Returns the exit status."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        return proc.wait()


# ----------------------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def collect(work_dir: str, lrs: Sequence[float], wds: Sequence[float], num_seeds: int) -> list[dict]:
    """Per point: the finished seeds' metrics, their mean/std, and which point is best (highest mean mIoU)."""
    rows = []
    for wd in wds:
        for lr in lrs:
            per_seed = []
            for seed in range(num_seeds):
                path = os.path.join(run_dir(work_dir, lr, wd, seed), METRICS_FILE)
                if os.path.isfile(path):
                    with open(path) as f:
                        per_seed.append((seed, json.load(f)))
            row = dict(lr=lr, wd=wd, num_seeds=len(per_seed), seeds=[s for s, _ in per_seed], best=False)
            for key in METRIC_KEYS:
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([float(m[key]) for _, m in per_seed])
            rows.append(row)
    done = [r for r in rows if r["num_seeds"] > 0 and math.isfinite(r["mIoU_mean"])]
    if done:
        max(done, key=lambda r: r["mIoU_mean"])["best"] = True
    return rows


def write_summary(work_dir: str, rows: list[dict], title: str = "") -> tuple[str, str]:
    """Write ``summary.csv`` and ``summary.md`` into ``work_dir``. Returns their paths."""
    os.makedirs(work_dir, exist_ok=True)
    csv_path = os.path.join(work_dir, "summary.csv")
    md_path = os.path.join(work_dir, "summary.md")
    fields = ["lr", "wd", "num_seeds", "seeds"]
    for key in METRIC_KEYS:
        fields += [f"{key}_mean", f"{key}_std"]
    fields.append("best")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            out = {k: r[k] for k in fields}
            out["seeds"] = " ".join(str(s) for s in r["seeds"])
            out["best"] = int(r["best"])
            for key in METRIC_KEYS:
                for stat in ("mean", "std"):
                    v = r[f"{key}_{stat}"]
                    out[f"{key}_{stat}"] = "" if not math.isfinite(v) else f"{v:.4f}"
            w.writerow(out)

    def fmt(r, key):
        if r["num_seeds"] == 0:
            return "-"
        return f"{r[key + '_mean']:.2f} ± {r[key + '_std']:.2f}"

    lines = [f"# ADE20K Segmenter linear: {title}".rstrip(": "), ""]
    lines.append("Mean ± std (population std, ddof=0) over seeds of the final single-scale validation.")
    lines.append("")
    lines.append("| lr | wd | seeds | mIoU | aAcc | mAcc | best |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        mark = "**best**" if r["best"] else ""
        cells = [fmt(r, k) for k in METRIC_KEYS]
        if r["best"]:
            cells = [f"**{c}**" for c in cells]
        lines.append(f"| {r['lr']:g} | {r['wd']:g} | {r['num_seeds']} | " + " | ".join(cells) + f" | {mark} |")
    best = [r for r in rows if r["best"]]
    lines.append("")
    if best:
        b = best[0]
        lines.append(
            f"Reported (best point, lr {b['lr']:g}, wd {b['wd']:g}, {b['num_seeds']} seed(s)): "
            f"mIoU {fmt(b, 'mIoU')}, aAcc {fmt(b, 'aAcc')}, mAcc {fmt(b, 'mAcc')}"
        )
    else:
        lines.append("No finished runs yet.")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("empty list")
    return vals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line interface (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="tools/train_ade.sh",
        description="ADE20K Segmenter-linear fine-tuning: one run, seeds, or the paper's lr x wd sweep.",
    )
    p.add_argument("config")
    p.add_argument("ckpt", help="converted MMSeg-target backbone checkpoint")
    p.add_argument("--sweep", action="store_true", help="wd {1e-2,1e-4} x lr {8e-5,3e-5,1e-5,8e-6}")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per point (paper: 2)")
    p.add_argument("--lrs", type=_floats, help="comma-separated learning rates (overrides the sweep's)")
    p.add_argument("--wds", type=_floats, help="comma-separated weight decays (overrides the sweep's)")
    p.add_argument("--work-dir", help="default: outputs/ade20k/<config name>")
    p.add_argument("--summary-only", action="store_true", help="only (re)write the summary from finished runs")
    p.add_argument("--keep-going", action="store_true", help="continue with the next run when one fails")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="--cfg-options for every run")
    args = p.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"unexpected arguments (expected key=value): {bad}")
    return args


def default_lr_wd(config: str) -> tuple[float, float]:
    """The config's AdamW lr and weight decay."""
    from mmengine.config import Config

    opt = Config.fromfile(config).optim_wrapper.optimizer
    return float(opt["lr"]), float(opt.get("weight_decay", 0.0))


def main(argv: list[str] | None = None, runner=run_one) -> int:
    """Run the planned runs (skipping finished ones), then write the summary. Returns an exit status."""
    args = parse_args(argv)
    for path, what in ((args.config, "config"), (args.ckpt, "checkpoint")):
        if not os.path.isfile(path):
            print(f"[train_ade] {what} not found: {path}", file=sys.stderr)
            return 2
    work_dir = args.work_dir or os.path.join("outputs", "ade20k", os.path.splitext(os.path.basename(args.config))[0])
    if args.lrs and args.wds:
        lrs, wds = args.lrs, args.wds
    elif args.sweep:
        lrs, wds = args.lrs or list(SWEEP_LRS), args.wds or list(SWEEP_WDS)
    else:
        lr0, wd0 = default_lr_wd(args.config)
        lrs, wds = args.lrs or [lr0], args.wds or [wd0]
    plan = plan_runs(lrs, wds, args.seeds)
    failed, launched = [], 0
    if not args.summary_only:
        print(f"[train_ade] {len(plan)} run(s): lr {lrs} x wd {wds} x seeds 0..{args.seeds - 1} -> {work_dir}")
        for i, (lr, wd, seed) in enumerate(plan):
            out = run_dir(work_dir, lr, wd, seed)
            tag = f"[train_ade] ({i + 1}/{len(plan)}) {point_name(lr, wd)} seed{seed}"
            if is_finished(out):
                print(f"{tag}: finished, skipped")
                continue
            resume = can_resume(out)
            print(f"{tag}: {'resuming' if resume else 'starting'} in {out}", flush=True)
            cmd = build_command(args.config, args.ckpt, out, lr, wd, seed, args.overrides, resume=resume)
            rc = runner(cmd, os.path.join(out, "train_ade.log"))
            launched += 1
            if rc != 0 or not is_finished(out):
                failed.append((lr, wd, seed, rc))
                print(f"{tag}: FAILED (exit status {rc}); log: {os.path.join(out, 'train_ade.log')}", file=sys.stderr)
                if not args.keep_going:
                    break
    rows = collect(work_dir, lrs, wds, args.seeds)
    csv_path, md_path = write_summary(work_dir, rows, title=os.path.basename(args.config))
    if launched:  # one segmenter_sweep record per sweep that trained something (docs/evaluation.md)
        from resultsdb.hooks import record_sweep

        grid = dict(
            config=os.path.abspath(args.config), lrs=lrs, wds=wds, num_seeds=args.seeds, overrides=args.overrides
        )
        record_sweep(rows, args.ckpt, grid, work_dir)
    with open(md_path) as f:
        print(f.read())
    print(f"[train_ade] summary: {md_path} {csv_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
