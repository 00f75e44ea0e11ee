#!/usr/bin/env python
"""Frozen-backbone dense patch probes (1-NN and linear) on an ADE20K-layout set (docs/protocols.md §4, LocalRep).

Patch tokens after the chosen blocks (final LayerNorm applied), patch label = majority pixel label (patches whose
majority is the ignore label are skipped), optional removal of the top-m variance dimensions (variance over the
training tokens), 1-NN by cosine similarity and/or a logistic-regression probe; patch-level mIoU (MMSeg IoUMetric
semantics), accuracy and mean class accuracy on the validation split. Writes ``probe_results.csv`` and
``probe_results.json`` under ``--out`` and prints a table.

Examples::

    python tools/make_toy_data.py --out data/toy
    python tools/probe_dense.py outputs/demo/backbone.pth --data data/toy/ade --probe nn
    python tools/probe_dense.py outputs/demo/backbone.pth --data data/toy/ade --probe nn --random-init
    python tools/probe_dense.py mae_vitb.pth --data ade --layers all --remove-top-var 0 200 --probe both
"""

import argparse
import sys

from transfer.analysis.cli import add_output_options, add_read_options, run_tool


def parse_layers(text):
    """``last`` | ``all`` | comma-separated 1-based block numbers (negative: from the end, -1 = last)."""
    if text in ("last", "all"):
        return text
    out = []
    for part in text.split(","):
        try:
            v = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--layers: expected last, all or i,j,... got {text!r}") from None
        if v == 0:
            raise argparse.ArgumentTypeError("--layers: block numbers are 1-based (1 = first block, -1 = last)")
        out.append(v - 1 if v > 0 else v)
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument(
        "--data", required=True, help="ADE20K-layout folder (images/ and annotations/ {training,validation})"
    )
    p.add_argument("--size", type=int, default=224, help="input side in pixels (rounded down to a patch multiple)")
    p.add_argument("--layers", type=parse_layers, default="last", help="last | all | 1-based block numbers i,j")
    p.add_argument(
        "--remove-top-var",
        type=int,
        nargs="+",
        default=[0],
        metavar="M",
        help="drop the M highest-variance dims before probing; several values give several rows",
    )
    p.add_argument("--probe", choices=("nn", "linear", "both"), default="both")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="same architecture (from the checkpoint's metadata), random weights: the baseline",
    )
    p.add_argument("--seed", type=int, default=0, help="random-init and linear-probe seed")
    p.add_argument("--num-classes", type=int, help="number of classes (default: from the labels)")
    p.add_argument(
        "--no-reduce-zero-label",
        dest="reduce_zero",
        action="store_false",
        help="labels are already 0..K-1 with 255 = ignore (default: ADE raw labels, 0 = ignore, 1..K = classes)",
    )
    p.add_argument("--max-train", type=int, help="use the first N training images")
    p.add_argument("--max-val", type=int, help="use the first N validation images")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--linear-steps", type=int, default=300)
    add_read_options(p)
    add_output_options(p, "outputs/analysis/probe")
    return p


def main(argv=None):
    """Run :func:`transfer.analysis.probes.dense_probe_report` on the command line; returns the exit status."""
    from transfer.analysis.probes import dense_probe_report

    return run_tool("probe_dense", dense_probe_report, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
