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
    p.add_argument("--out", default="outputs/analysis/position", help="output folder")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None):
    """Parse arguments, run the grid, write the tables. Returns the exit status."""
    args = build_parser().parse_args(argv)
    import torch

    from transfer.analysis.backbones import AdapterError, load_adapter
    from transfer.analysis.images import list_images, load_image
    from transfer.analysis.position import format_grid, mean_over_cells, position_accuracy, write_tables

    if args.size < 1 or args.batch_size < 1 or args.repeats < 1:
        print("probe_position: error: --size, --batch-size and --repeats must be positive", file=sys.stderr)
        return 2
    try:
        adapter = load_adapter(args.checkpoint, image_size=args.size, random_init=args.random_init, seed=args.seed)
        if not adapter.supports_masks:
            raise AdapterError(
                f"{args.checkpoint}: no [POSMASK] token (only our own backbones have one); nothing to measure"
            )
        side = max(adapter.patch_size, (args.size // adapter.patch_size) * adapter.patch_size)
        files = list_images(args.images, args.max_images or None)
        images = torch.stack([load_image(f, side) for f in files])
        cells = position_accuracy(
            adapter,
            images,
            args.content_ratios,
            args.pos_ratios,
            repeats=args.repeats,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.quiet,
            reference=args.reference,
        )
    except (AdapterError, FileNotFoundError, ValueError) as e:
        print(f"probe_position: error: {e}", file=sys.stderr)
        return 2
    paths = write_tables(cells, args.out)
    g = side // adapter.patch_size
    print(
        f"{adapter.name}{' (random init)' if args.random_init else ''}: {len(files)} images at {side}px, "
        f"grid {g}x{g}, reference {args.reference}, chance {1.0 / (g * g):.4f}"
    )
    print(format_grid(cells, "top1"))
    print(format_grid(cells, "within1"))
    print(
        f"mean top-1 over cells {mean_over_cells(cells, 'top1'):.4f}, within-1 {mean_over_cells(cells, 'within1'):.4f}"
    )
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
