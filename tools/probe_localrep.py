#!/usr/bin/env python
"""LocalRep probes of the frozen patch features (docs/evaluation.md): patch retrieval / instance identification
under whole-patch shifts, a 90-degree rotation and rescaling by 0.8-1.2, scored at image and patch level;
robustness curves under blur, Gaussian noise and band-limited noise; tracking association of ROIAlign-pooled
object features against the frame gap on a toy moving-objects sequence; with ``--ade``, the global-context probe
(ridge R^2 of the three most common classes' pixel fractions from the central patch). Writes
``localrep_results.json`` and ``localrep_robustness.png`` under ``--out`` and records protocol ``localrep``.

Example::

    python tools/probe_localrep.py outputs/demo/backbone.pth --images data/toy/images --ade data/toy/ade_texture
"""

import argparse
import sys

from transfer.analysis.cli import add_output_options, add_read_options, run_tool


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--images", required=True, help="image folder (recursive)")
    p.add_argument("--ade", help="ADE-layout set for the global-context R^2 probe (training + validation images)")
    p.add_argument("--size", type=int, default=96, help="input side (rounded down to a patch multiple)")
    p.add_argument("--max-images", type=int, default=16, help="first N images (sorted)")
    p.add_argument("--frames", type=int, default=10, help="frames of the moving-objects sequence")
    p.add_argument("--objects", type=int, default=4, help="objects in the sequence")
    p.add_argument("--max-gap", type=int, default=6, help="largest frame gap scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    add_read_options(p)
    add_output_options(p, "outputs/analysis/localrep")
    return p


def main(argv=None):
    """Run :func:`transfer.analysis.localrep_report.localrep_report`; returns the exit status."""
    from transfer.analysis.localrep_report import localrep_report

    return run_tool("probe_localrep", localrep_report, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
