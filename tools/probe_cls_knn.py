#!/usr/bin/env python
"""Image-level CLS k-NN probe on the toy texture classes (``transfer/analysis/cls_knn.py``).

Each class is one texture pattern with random colours, so the CLS token has to carry the pattern. Cosine k-NN
(majority vote) trained on the ``train`` split, top-1 on the ``val`` split. Writes ``cls_knn.json`` under ``--out``
and records the number in the results database (docs/evaluation.md).

Example::

    python tools/probe_cls_knn.py outputs/demo/backbone.pth --size 96
"""

import argparse
import sys

from transfer.analysis.cli import add_output_options, add_read_options, run_tool


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--num-per-class", type=int, default=24, help="images per class and split")
    p.add_argument("--num-classes", type=int, default=6, help="texture classes (at most 6)")
    p.add_argument("--k", type=int, default=5, help="neighbours")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the toy images")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    p.add_argument("--seed", type=int, default=0, help="random-init seed")
    add_read_options(p)
    add_output_options(p, "outputs/analysis/cls_knn")
    return p


def main(argv=None):
    """Run :func:`transfer.analysis.cls_knn.cls_knn_report`; returns the exit status."""
    from transfer.analysis.cls_knn import cls_knn_report

    return run_tool("probe_cls_knn", cls_knn_report, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
