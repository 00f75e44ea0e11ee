#!/usr/bin/env python
"""Position accuracy of any checkpoint: DropPos's 4 x 4 grid of top-1 position predictions (or the head-free proxy).

For each patch mask ratio gamma in 0, .25, .5, .75 x position mask ratio gamma_pos in .25, .5, .75, .95, every image
keeps int(N (1 - gamma)) of its N patches (MAE-style shuffle) and, among them, int(K (1 - gamma_pos)) keep their
position embedding; the others get a [MASK] position token instead: the backbone's own [POSMASK] token (ours), or
a learned one trained with the probe, or zeros (--mask-token). A predictor classifies each position-dropped token
into one of the N grid positions; top-1 is pooled over the images of a cell (chance 1/N), the mean is over cells.

Predictor: the checkpoint's own head when there is one (a DropPos ``droppos_head.pth`` beside the backbone, or
--head PATH; --head none to skip it), else a linear position classifier (DropPos Table 7) trained on the frozen
backbone with cross-entropy at gamma 0, gamma_pos 0.75 on --train-images (default: the evaluation folder, masks
from seed + 1; progress on stderr). --proxy runs the older head-free proxy instead (cosine match against the
unmasked forward; ``transfer/analysis/position.py``), with its own output files.

Writes ``position_accuracy.csv`` (rows gamma, columns gamma_pos), ``position_accuracy_cells.csv`` and
``position_accuracy.json`` under ``--out`` (with --proxy: ``position_top1.csv``, ``position_within1.csv``,
``position_results.csv``).

Example::

    python tools/probe_position.py outputs/demo/backbone.pth --images data/toy/images --size 96
"""

from __future__ import annotations

import argparse
import sys

from transfer.analysis.cli import add_output_options, add_read_options, run_tool


def _ratios(text):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios, got {text!r}") from None
    if any(not 0.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"ratios must be in [0, 1], got {text!r}")
    return vals


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help="any checkpoint the converter reads (--proxy: ours only)")
    p.add_argument("--images", required=True, help="evaluation image folder (recursive)")
    p.add_argument("--train-images", help="the linear probe's training folder (default: --images, other seed)")
    p.add_argument(
        "--size",
        type=int,
        help="input side, rounded down to a patch multiple (default 224, or the grid the own head was trained on)",
    )
    p.add_argument("--max-images", type=int, default=64, help="first N images (sorted); 0 = all")
    p.add_argument("--max-train-images", type=int, help="first N training images (default 256)")
    p.add_argument(
        "--mask-token",
        choices=("own", "learned", "zeros", "wrong_pos"),
        help="what replaces dropped positions (default: own [POSMASK] token if any, else learned)",
    )
    p.add_argument("--head", help="own position head file, 'none', or 'auto' (default: droppos_head.pth beside CKPT)")
    p.add_argument("--probe-epochs", type=int, help="linear probe epochs (default 10)")
    p.add_argument("--probe-lr", type=float, help="linear probe AdamW learning rate (default 1e-2)")
    p.add_argument("--proxy", action="store_true", help="run the head-free proxy instead (transfer/analysis/position)")
    p.add_argument("--content-ratios", type=_ratios, help="gamma values (default 0,0.25,0.5,0.75; --proxy 0,0.25,0.5)")
    p.add_argument(
        "--pos-ratios", type=_ratios, help="gamma_pos values (default 0.25,0.5,0.75,0.95; --proxy 0.25,0.5,0.75)"
    )
    p.add_argument("--repeats", type=int, help="--proxy: random mask draws per image and cell (default 1)")
    p.add_argument("--batch-size", type=int, help="default 16 (--proxy 8)")
    p.add_argument("--seed", type=int, default=0, help="mask seed (the probe trains with seed + 1)")
    p.add_argument(
        "--reference",
        choices=("unmasked", "position"),
        help="--proxy: match against the unmasked forward's tokens (default) or position templates",
    )
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    add_read_options(p)
    add_output_options(p, "outputs/analysis/position")
    return p


def main(argv=None):
    """Run :func:`transfer.analysis.position_accuracy.probe_position_report`; returns the exit status."""
    from transfer.analysis.position_accuracy import probe_position_report

    return run_tool("probe_position", probe_position_report, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
