"""``tools/convert_ckpt.py``: the command line of :func:`transfer.convert.api.convert_checkpoint`
(docs/protocols.md §1). Every flag's destination is the keyword argument of the same name."""

from __future__ import annotations

import argparse
import sys

from pretrain.models.position_field import POS_INTERPOLATIONS

from .api import convert_checkpoint
from .canonical import ConversionError
from .readers import FORMATS
from .writers import TARGETS

__all__ = ["build_parser", "convert_checkpoint", "main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="convert_ckpt.py",
        description="Convert a ViT checkpoint (ours, DINOv2, timm, MAE/iBOT/DINO) for detectron2, MMSeg or timm, "
        "checking the result numerically before writing it.",
    )
    ap.add_argument(
        "--src", required=True, help="source checkpoint file, Hugging Face model directory or .safetensors file"
    )
    ap.add_argument("--dst", required=True, help="output file (written atomically, only if every check passes)")
    ap.add_argument("--target", required=True, choices=TARGETS)
    ap.add_argument(
        "--grid",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="patch grid the target config uses (defaults: detectron2 64 64 = 1024/16, mmseg 32 32 = 512/16, "
        "timm 14 14 = 224/16)",
    )
    ap.add_argument("--src-format", default="auto", choices=("auto",) + FORMATS)
    ap.add_argument("--patch-size", type=int, default=16, help="target patch size; other kernels are resampled")
    ap.add_argument(
        "--num-heads",
        type=int,
        help="attention heads (not inferable from weights); default: checkpoint metadata, else the standard table "
        "192->3, 384->6, 768->12, 1024->16, 1280->16, 1536->24",
    )
    ap.add_argument("--norm-eps", type=float, help="LayerNorm eps (default: metadata, else 1e-6; DINOv3 1e-5)")
    ap.add_argument(
        "--pos-interpolation",
        default="auto",
        choices=("auto",) + POS_INTERPOLATIONS,
        help="how the source model resizes its stored pos_embed to another grid; auto = the source's own rule "
        "(DINOv2: 'dinov2' = scale factor with offset 0.1, register models 'size_antialias'; timm "
        "'size_antialias'; MAE 'size'; ours: its metadata)",
    )
    ap.add_argument("--drop-registers", action="store_true", help="drop register tokens for targets without them")
    ap.add_argument(
        "--keep-tokens",
        action="store_true",
        help="detectron2: also write backbone.net.cls_token / reg_token (for the project's SDPA backbone); mmseg: keep "
        "registers (for the project's RegisterVisionTransformer)",
    )
    ap.add_argument("--no-check", action="store_true", help="skip the numeric parity check (not recommended)")
    ap.add_argument("--tol", type=float, default=1e-4, help="parity tolerance (x max(1, max|ref|)); default 1e-4")
    ap.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow torch.load(weights_only=False) for checkpoints holding Python objects; only for trusted files",
    )
    return ap


def main(argv=None) -> int:
    """Entry point: convert and print the summary. Returns 0 on success, 2 on a conversion error or a failed write
    (argparse usage errors raise SystemExit)."""
    args = build_parser().parse_args(argv)
    try:
        convert_checkpoint(**vars(args))
    except (ConversionError, OSError) as e:  # OSError: the final write (e.g. a full disk, see pretrain/io.py)
        print(f"convert_ckpt: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
