#!/usr/bin/env python
"""MAXA: masked cross-attention adapters on the frozen backbone (the MAXA paper; docs/evaluation.md).

Per task, a small adapter (fixed positional queries, two cross-attention layers, the first with a learned per-head
Gaussian distance bias, an upsampling CNN) is trained on the frozen last-layer features and scored on the
validation split: instance boundaries (IoU), distance transform to the boundaries (MSE), instance discrimination
(ARI of k-means clusters, k = number of instances) on a COCO-format set; semantic segmentation (mIoU) on an
ADE-layout set; depth (MSE) where the COCO set has a ``depth/`` folder. Writes ``maxa_results.json`` and
``maxa_pca.png`` (PCA-RGB of the features) under ``--out`` and records protocol ``maxa``.

Example::

    python tools/probe_maxa.py outputs/demo/backbone.pth --coco data/toy/coco --ade data/toy/ade_texture --size 96
"""

import argparse
import sys

from transfer.analysis.cli import add_output_options, add_read_options, run_tool


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--coco", help="COCO-format root (train/, val/, annotations/instances_{train,val}.json)")
    p.add_argument("--ade", help="ADE20K-layout root (semantic segmentation)")
    p.add_argument(
        "--tasks",
        type=lambda s: s.split(","),
        help="comma-separated: boundaries,distance,instances,semseg,depth (default: all with data)",
    )
    p.add_argument("--size", type=int, default=96, help="input side (rounded down to a patch multiple)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps per task")
    p.add_argument("--max-train", type=int, help="first N training images")
    p.add_argument("--max-val", type=int, help="first N validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    add_read_options(p)
    add_output_options(p, "outputs/analysis/maxa")
    return p


def main(argv=None):
    """Run :func:`transfer.analysis.maxa.report.maxa_report`; returns the exit status."""
    from transfer.analysis.maxa.report import maxa_report

    return run_tool("probe_maxa", maxa_report, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
