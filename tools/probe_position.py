#!/usr/bin/env python
"""Position-prediction accuracy of a backbone with a [POSMASK] token (DropPos-style grid, head-free proxy).

For each content mask ratio x position mask ratio, random patches get [MASK] content / [POSMASK] position (disjoint
sets; the position mask is drawn among the content-visible patches, as in DropPos), and each position-masked
patch's output token is matched (cosine, argmax over all patches) against the tokens of an unmasked forward of the
same image. Top-1 = predicted exactly at its own patch; within-1 = at most one patch away (8-neighbourhood).
This needs no position head (our exported backbones do not contain one), so it is a proxy of DropPos's metric,
not the same number; see ``transfer/analysis/position.py``.

Writes ``position_top1.csv`` and ``position_within1.csv`` (rows content ratio, columns position ratio) and
``position_results.csv`` under ``--out``.

Example::

    python tools/probe_position.py outputs/demo/backbone.pth --images data/toy/images --size 224
"""

import argparse
import sys

from transfer.analysis.cli import add_output_options, run_tool


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
    p.add_argument("checkpoint", metavar="CKPT", help="one of our backbones (has posmask_token)")
    p.add_argument("--images", required=True, help="image folder (recursive)")
    p.add_argument("--size", type=int, default=224, help="input side (rounded down to a patch multiple)")
    p.add_argument("--max-images", type=int, default=64, help="first N images (sorted); 0 = all")
    p.add_argument("--content-ratios", type=_ratios, default=[0.0, 0.25, 0.5], help="e.g. 0,0.25,0.5")
    p.add_argument("--pos-ratios", type=_ratios, default=[0.25, 0.5, 0.75], help="e.g. 0.25,0.5,0.75")
    p.add_argument("--repeats", type=int, default=1, help="random mask draws per image and cell")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reference",
        choices=("unmasked", "position"),
        default="unmasked",
        help="match against the unmasked forward's tokens (default) or position templates (all content [MASK])",
    )
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    add_output_options(p, "outputs/analysis/position")
    return p


def main(argv=None):
    """Run :func:`transfer.analysis.position.position_report` on the command line; returns the exit status."""
    from transfer.analysis.position import position_report

    return run_tool("probe_position", position_report, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
