"""Start-up cost of a pretraining image folder: listing, header check (what the engine does) and full decode.

Writes N small JPEGs into a temporary folder, then times, in one process:
- listing the folder (``ImageFolderDataset(validate=False)``),
- reading every header (``validate="header"``, the engine's start-up check),
- fully decoding every image (``validate=True``, the former start-up check),
and prints files/s of each and the ratio decode / header.

    python benchmarks/folder_startup.py --files 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain.data.folder import ImageFolderDataset  # noqa: E402


def write_images(root: str, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = os.path.join(root, f"{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(sub, f"{i:07d}.jpg"), quality=85)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        t_write = timed(lambda: write_images(root, args.files, args.size))
        print(f"wrote {args.files} JPEGs of {args.size} px in {t_write:.1f} s")
        rows = []
        for name, validate in (("list", False), ("header", "header"), ("decode", True)):
            t = timed(lambda v=validate: ImageFolderDataset(root, validate=v))
            rows.append((name, t))
            print(f"{name:7s} {t:8.2f} s  {args.files / t:10.0f} files/s")
        header, decode = rows[1][1], rows[2][1]
        print(f"decode / header: {decode / header:.2f}x; header check minus listing: {header - rows[0][1]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
