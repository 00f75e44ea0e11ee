"""``tools/evaluate.sh``: the probe suite on one checkpoint, its summary table and plots (docs/evaluation.md).

Each probe is its tool's ``main`` (``tools/<tool>.py``), run in this process with its output in a log file; one
failing probe is reported and the others still run. Every tool records its numbers in the results database
itself. The summary takes the headline numbers from the tools' output files: ``summary.md``, ``summary.csv`` and
``summary.png`` under the output folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# per suite: tool options (quick: minutes on a CPU with the toy sets; smoke: seconds; full: larger settings)
SETTINGS = {
    "quick": {
        "cls_knn": ["--size", "96", "--num-per-class", "24"],
        "probe_dense": ["--size", "96", "--probe", "both", "--remove-top-var", "0", "4", "--linear-steps", "200"],
        "probe_position": ["--size", "96", "--max-images", "32", "--max-train-images", "96", "--probe-epochs", "5"],
        "analyze_attention": ["--size", "128", "--max-images", "8", "--map-images", "2"],
        "maxa": ["--size", "96", "--steps", "150"],
        "localrep": ["--size", "96", "--max-images", "16"],
    },
    "smoke": {  # seconds: that every step runs and reports (tests); the numbers mean nothing
        "cls_knn": ["--size", "32", "--num-per-class", "4"],
        "probe_dense": ["--size", "64", "--probe", "nn"],
        "probe_position": ["--size", "64", "--max-images", "4", "--max-train-images", "4", "--probe-epochs", "1"]
        + ["--content-ratios", "0", "--pos-ratios", "0.5"],
        "analyze_attention": ["--size", "64", "--max-images", "2", "--map-images", "1"],
        "maxa": ["--size", "64", "--steps", "2", "--max-train", "2", "--max-val", "2"],
        "localrep": ["--size", "64", "--max-images", "2", "--frames", "4", "--max-gap", "2"],
    },
    "full": {
        "cls_knn": ["--size", "128", "--num-per-class", "48"],
        "probe_dense": ["--size", "160", "--probe", "both", "--layers", "all", "--remove-top-var", "0", "4", "16"],
        "probe_position": ["--size", "96", "--max-images", "0", "--max-train-images", "256"],
        "analyze_attention": ["--size", "256", "--max-images", "32"],
        "maxa": ["--size", "128", "--steps", "1000"],
        "localrep": ["--size", "128", "--max-images", "64", "--frames", "16", "--max-gap", "10"],
    },
}


@dataclass
class Step:
    """One tool run: its name, the tool (``tools/<tool>.py``), its arguments and the output folder."""

    name: str
    tool: str
    argv: list[str]
    out: str


def plan(checkpoint: str, out: str, suite: str, data: dict, random_init: bool, seed: int) -> list[Step]:
    """The tool runs of ``suite`` on ``checkpoint``; ``data``: ``ade``, ``images``, ``coco``, ``coco_images``.
    ``random_init``: the same architecture at random weights (``seed``); attention has no such baseline."""
    opts = SETTINGS[suite]
    base = ["--random-init"] if random_init else []
    seed_opt = ["--seed", str(seed)]
    steps = [
        ("cls_knn", "probe_cls_knn", opts["cls_knn"] + base + seed_opt),
        ("probe_dense", "probe_dense", ["--data", data["ade"]] + opts["probe_dense"] + base + seed_opt),
        ("probe_position", "probe_position", ["--images", data["images"]] + opts["probe_position"] + base + seed_opt),
    ]
    maxa = ["--coco", data["coco"], "--ade", data["ade"]] + opts["maxa"] + base + seed_opt
    steps.append(("maxa", "probe_maxa", maxa))
    localrep = ["--images", data["images"], "--ade", data["ade"]] + opts["localrep"] + base + seed_opt
    steps.append(("localrep", "probe_localrep", localrep))
    if not random_init:
        steps.append(("attention", "analyze_attention", ["--images", data["coco_images"]] + opts["analyze_attention"]))
    return [
        Step(name, tool, [checkpoint, *args, "--quiet", "--out", os.path.join(out, name)], os.path.join(out, name))
        for name, tool, args in steps
    ]


def load_tool(tool: str):
    """``tools/<tool>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{tool}", os.path.join(REPO, "tools", f"{tool}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_step(step: Step) -> int:
    """The tool's ``main(argv)`` in this process (one import of torch for the whole suite), its output and any
    traceback into ``<out>/log.txt``; an exception or ``SystemExit`` is the step's failure, not the suite's."""
    os.makedirs(step.out, exist_ok=True)
    with open(os.path.join(step.out, "log.txt"), "w") as fh, redirect_stdout(fh), redirect_stderr(fh):
        try:
            return int(load_tool(step.tool).main(step.argv) or 0)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        except Exception:  # one probe's crash is reported and the suite goes on
            traceback.print_exc()
            return 1


def run_steps(steps: list[Step], log) -> dict[str, dict]:
    """Run each step; ``{name: {"rc", "seconds"}}``, each reported through ``log`` as it ends."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    status = {}
    for step in steps:
        t0 = time.time()
        rc = run_step(step)
        status[step.name] = {"rc": rc, "seconds": round(time.time() - t0, 1)}
        state = "ok" if rc == 0 else f"FAILED (exit {rc}), see {step.out}/log.txt"
        log(f"[evaluate] {step.name}: {state} ({status[step.name]['seconds']}s)")
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/evaluate.sh", description="the probe suite on one checkpoint")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--suite", choices=sorted(SETTINGS), default="quick")
    p.add_argument("--out", help="output folder (default: outputs/eval/<checkpoint folder>[_random]_<suite>)")
    p.add_argument("--random-init", action="store_true", help="the same architecture at random weights")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="repeat the suite with these seeds")
    p.add_argument("--data", default="data/toy", help="toy data root (ade_texture/, images/, coco/val/)")
    return p


def default_out(checkpoint: str, suite: str, random_init: bool) -> str:
    name = os.path.basename(os.path.dirname(os.path.abspath(checkpoint))) or "ckpt"
    return os.path.join("outputs", "eval", f"{name}{'_random' if random_init else ''}_{suite}")


def main(argv=None) -> int:
    """Run the suite once per seed, write the summaries; exit 0 when every step succeeded, 1 otherwise, 2 on
    bad input."""
    from .summary import collect, write_summary

    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        print(f"evaluate: error: no checkpoint file {args.checkpoint}", file=sys.stderr)
        return 2
    data = {"ade": os.path.join(args.data, "ade_texture"), "images": os.path.join(args.data, "images")}
    data["coco"] = os.path.join(args.data, "coco")
    data["coco_images"] = os.path.join(data["coco"], "val")
    missing = [p for p in data.values() if not os.path.isdir(p)]
    if missing:
        print(f"evaluate: error: missing data folder {missing[0]} (tools/make_toy_data.py)", file=sys.stderr)
        return 2
    data = {k: os.path.abspath(v) for k, v in data.items()}
    root = os.path.abspath(args.out or default_out(args.checkpoint, args.suite, args.random_init))
    ckpt, ok = os.path.abspath(args.checkpoint), True
    for seed in args.seeds:
        out = root if len(args.seeds) == 1 else os.path.join(root, f"seed{seed}")
        status = run_steps(plan(ckpt, out, args.suite, data, args.random_init, seed), print)
        title = f"{args.checkpoint}{' (random init)' if args.random_init else ''}, {args.suite} suite, seed {seed}"
        paths = write_summary(out, title, collect(out, status), status)
        with open(os.path.join(out, "status.json"), "w") as fh:
            json.dump(status, fh, indent=1)
        print(f"[evaluate] summary: {paths['md']} {paths['csv']} {paths['png']}")
        ok = ok and all(s["rc"] == 0 for s in status.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
