#!/usr/bin/env python
"""Generate the deterministic toy data sets (pretraining images, COCO instances with depth maps, ADE20K sets by colour
/ by texture).

Examples::

    python tools/make_toy_data.py --out data/toy --seed 0                 # all of them, idempotent (ensure_toy_data)
    python tools/make_toy_data.py --out data/toy_coco --what coco --num-train 100 --num-val 20 --overwrite
    python tools/make_toy_data.py --out data/toy_coco --what depth        # depth maps beside a COCO set
"""

from __future__ import annotations

import argparse
import os
import sys

import toydata


def _size(text: str) -> tuple[int, int]:
    """Parse ``N`` or ``HxW`` into ``(h, w)``."""
    parts = text.lower().split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(vals) == 1:
        return (vals[0], vals[0])
    if len(vals) == 2:
        return (vals[0], vals[1])
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (for --what all: the toy-data root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--what",
        choices=("all", "images", "coco", "ade", "depth"),
        default="all",
        help="depth: depth maps from the layer order beside an existing COCO set (--out: its root; all writes them "
        "for its own COCO set)",
    )
    p.add_argument("--num-images", type=int, default=256, help="pretraining images")
    p.add_argument(
        "--image-scenes",
        choices=toydata.IMAGE_SCENES,
        default="texture",
        help="pretraining images: scenes of the texture world of ade_texture/ or COCO-like object scenes",
    )
    p.add_argument("--image-size", type=_size, default=(160, 160), help="pretraining image size, N or HxW")
    p.add_argument("--num-train", type=int, default=24, help="COCO/ADE training images")
    p.add_argument("--num-val", type=int, default=8, help="COCO/ADE validation images")
    p.add_argument("--size", type=_size, default=(256, 256), help="COCO/ADE image size, N or HxW")
    p.add_argument("--num-classes", type=int, default=6, help="ADE classes (labels 1..K)")
    p.add_argument(
        "--appearance",
        choices=toydata.ADE_APPEARANCES,
        default="colour",
        help="--what ade: classes told apart by colour (and texture) or by texture alone (random colours)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="images/coco/ade: replace previously generated files; all: regenerate even if up to date",
    )
    return p


def _spec(args: argparse.Namespace) -> toydata.ToySpec:
    """The spec of ``--what all``; COCO and ADE share ``--num-train``, ``--num-val`` and ``--size``."""
    split = dict(num_train=args.num_train, num_val=args.num_val, size=args.size)
    return toydata.ToySpec(
        seed=args.seed,
        images=toydata.ImagesSpec(num=args.num_images, size=args.image_size, scenes=args.image_scenes),
        coco=toydata.CocoSpec(**split),
        ade=toydata.AdeSpec(**split, num_classes=args.num_classes),
    )


def _count_files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def _make_all(args: argparse.Namespace) -> None:
    spec = _spec(args)
    marker = toydata.toy_data_paths(args.out)["marker"]
    before = os.stat(marker).st_mtime_ns if os.path.isfile(marker) else None
    paths = toydata.ensure_toy_data(args.out, spec, force=args.overwrite)
    if before is not None and os.stat(marker).st_mtime_ns == before:
        print(f"{args.out} is up to date for these parameters; nothing written (--overwrite regenerates)")
    for key in ("images", "coco", "coco_depth", "ade", "ade_texture"):
        print(f"{key:11s} {paths[key]}  ({_count_files(paths[key])} files)")
    print(f"{'marker':11s} {paths['marker']}")


def _make_one(args: argparse.Namespace) -> None:
    common = dict(seed=args.seed, overwrite=args.overwrite)
    if args.what == "depth":
        for split, folder in toydata.make_toy_depth(args.out).items():
            print(f"depth {split:5s} {folder}  ({_count_files(folder)} files)")
        return
    if args.what == "images":
        out = toydata.make_toy_images(
            args.out, args.num_images, size=args.image_size, scenes=args.image_scenes, **common
        )
        print(f"images  {args.out}  ({len(out)} files)")
        return
    if args.what == "coco":
        paths = toydata.make_toy_coco(args.out, args.num_train, args.num_val, image_size=args.size, **common)
    else:
        paths = toydata.make_toy_ade(
            args.out,
            args.num_train,
            args.num_val,
            image_size=args.size,
            num_classes=args.num_classes,
            appearance=args.appearance,
            **common,
        )
    for key, val in paths.items():
        print(f"{key:13s} {val}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate, and print what was written."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        if args.what == "all":
            _make_all(args)
        else:
            _make_one(args)
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError) as e:
        p.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
