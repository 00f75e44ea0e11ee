#!/usr/bin/env python
"""Attention statistics per layer (NMI, mean attention distance) and final-layer query maps (paper App. A).

For each checkpoint (ours, or anything ``tools/convert_ckpt.py`` reads: DINOv2, timm, MAE/iBOT/DINO) writes, under
``--out``:

- ``attention_stats.csv``: ``checkpoint, layer (1-based), nmi, mad (pixels), nmi_std, mad_std (over images), ...``;
- ``attention_stats.png``: NMI vs depth and MAD vs depth, one curve per checkpoint (paper Fig. 5);
- ``attention_maps_<ckpt>.png``: head-averaged final-layer attention of each query point over the first images,
  red dot at the query (paper Fig. 6).

Definitions: docs/protocols.md §4 (Park et al.): CLS/register rows and columns dropped, rows renormalised, per head,
then averaged over heads and images. Images are resized to ``--size`` (rounded down to a multiple of the patch
size); position embeddings are sampled (our field) or interpolated (``pos_embed``) at that grid.

Examples::

    python tools/analyze_attention.py outputs/demo/backbone.pth --images data/toy/coco/val --size 480 --out out/attn
    python tools/analyze_attention.py a.pth b.pth --images imgs --queries 0.5,0.5 120,200 --max-images 8
"""

import argparse
import os
import sys

from transfer.analysis.cli import add_output_options, add_read_options, run_tool


def parse_query(text):
    """``x,y``: floats in [0, 1] (with a decimal point) are fractions of the image, integers are pixels."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected x,y, got {text!r}")
    out = []
    for p in parts:
        p = p.strip()
        try:
            out.append(int(p) if p.lstrip("-").isdigit() else float(p))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers in x,y, got {text!r}") from None
    if any(v < 0 for v in out):
        raise argparse.ArgumentTypeError(f"query coordinates must be >= 0, got {text!r}")
    return tuple(out)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="one or more checkpoints")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--size", type=int, default=480, help="input side in pixels (paper: 480)")
    p.add_argument("--max-images", type=int, default=16, help="use the first N images (sorted); 0 = all")
    p.add_argument(
        "--queries",
        nargs="+",
        type=parse_query,
        default=None,
        help="query points x,y: fractions (0.5,0.5) or pixels of the resized image (240,100); "
        "default 0.5,0.5 0.25,0.3 0.75,0.7",
    )
    p.add_argument("--map-images", type=int, default=4, help="images shown in each attention_maps PNG")
    p.add_argument("--batch-size", type=int, default=1)
    add_read_options(p)
    add_output_options(p, "outputs/analysis/attention")
    return p


def main(argv=None):
    """Run :func:`transfer.analysis.attention.attention_report` on the command line; returns the exit status."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from transfer.analysis.attention import attention_report

    return run_tool("analyze_attention", attention_report, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
