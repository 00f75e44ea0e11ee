"""``tools/convert_ckpt.py``: convert a ViT checkpoint for detectron2 ViTDet, MMSeg Segmenter or timm
(docs/protocols.md §1).

Pipeline (one-way): load (``weights_only=True``) -> read (format reader -> canonical, validated) -> resample the
patch kernel to ``--patch-size`` if needed -> fold LayerScale -> materialise positions at ``--grid`` -> write the
target dict -> numeric parity check against the source -> atomic save (temp file + ``os.replace``). Any error
exits non-zero with a message naming the key or the problem, and no output file is written.
"""

from __future__ import annotations

import argparse
import os
import sys

from .canonical import ConversionError, fold_layerscale, pos_source_desc, resample_patch_size
from .parity import check_parity
from .readers import FORMATS, ReadOptions, load_file, read_checkpoint
from .writers import DEFAULT_GRIDS, TARGETS, WRITERS

FORMAT_DESC = {
    "ours": "ssl-vit-toolkit backbone",
    "dinov2": "official DINOv2 layout",
    "timm": "timm VisionTransformer state dict",
    "mae": "MAE/iBOT/DINO release layout",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="convert_ckpt.py",
        description="Convert a ViT checkpoint (ours, DINOv2, timm, MAE/iBOT/DINO) for detectron2, MMSeg or timm, "
        "checking the result numerically before writing it.",
    )
    ap.add_argument("--src", required=True, help="source checkpoint file")
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
    ap.add_argument("--norm-eps", type=float, help="LayerNorm eps (default: metadata, else 1e-6)")
    ap.add_argument("--drop-registers", action="store_true", help="drop register tokens for targets without them")
    ap.add_argument(
        "--keep-tokens",
        action="store_true",
        help="detectron2: also write backbone.net.cls_token / reg_token (for the project's SDPA backbone)",
    )
    ap.add_argument("--no-check", action="store_true", help="skip the numeric parity check (not recommended)")
    ap.add_argument("--tol", type=float, default=1e-4, help="parity tolerance (x max(1, max|ref|)); default 1e-4")
    ap.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow torch.load(weights_only=False) for checkpoints holding Python objects; only for trusted files",
    )
    return ap


def _src_names(c, names) -> str:
    out = []
    for n in names:
        s = c.origin.get(n, n)
        out.append(s if isinstance(s, str) else ", ".join(s))
    return ", ".join(dict.fromkeys(out))


def convert(args) -> dict:
    """Run one conversion; returns a summary dict. Raises :class:`ConversionError` on any problem."""
    if os.path.exists(args.dst) and os.path.realpath(args.dst) == os.path.realpath(args.src):
        raise ConversionError("--dst must differ from --src")
    if args.patch_size < 1:
        raise ConversionError(f"--patch-size must be positive, got {args.patch_size}")
    grid = tuple(args.grid) if args.grid else DEFAULT_GRIDS[args.target]
    if min(grid) < 1:
        raise ConversionError(f"--grid must be positive, got {grid}")
    if args.keep_tokens and args.target != "detectron2":
        raise ConversionError("--keep-tokens only applies to --target detectron2 (timm keeps tokens anyway)")

    obj = load_file(args.src, unsafe_load=args.unsafe_load)
    opts = ReadOptions(src_format=args.src_format, num_heads=args.num_heads, norm_eps=args.norm_eps)
    c, _ = read_checkpoint(obj, opts)
    del obj
    n_params = c.num_params()
    c = resample_patch_size(c, args.patch_size)
    folded = fold_layerscale(c)
    res = WRITERS[args.target](folded, grid, keep_tokens=args.keep_tokens, drop_registers=args.drop_registers)

    parity = None
    if not args.no_check:
        parity = check_parity(args.target, c, res.state, res.meta, tol=args.tol)
        if not parity.ok:
            raise ConversionError(f"numeric check failed: {parity.describe()}; nothing written")

    # summary bookkeeping, in source key names
    dropped = [(k, r) for k, r in c.dropped]
    for name, reason in res.dropped:
        dropped.append((_src_names(c, [name]), reason))
    used = set()
    for name, _ in res.mapped:
        if name == "pos":
            used.add(c.origin.get("pos_field" if c.pos_field is not None else "pos_embed", "pos"))
            if c.cls_pos is not None and "cls_pos_embed" in c.source_keys:
                used.add("cls_pos_embed")
            continue
        src = c.origin.get(name, name)
        used.add(src)
    if folded.layerscale_folded:
        used |= {c.origin.get(k, k) for k in c.state if k.endswith((".ls1.gamma", ".ls2.gamma"))}
    used &= set(c.source_keys)
    res.meta["source_file"] = os.path.basename(args.src)

    from pretrain.io import atomic_torch_save

    atomic_torch_save(res.obj, args.dst)
    return {
        "source_format": c.source_format,
        "arch": c.arch.as_dict(),
        "num_params": n_params,
        "num_written": int(sum(t.numel() for t in res.state.values())),
        "source_keys": len(c.source_keys),
        "mapped": sorted(used),
        "dropped": dropped,
        "notes": c.notes + res.notes,
        "position": pos_source_desc(c),
        "grid": list(grid),
        "layerscale_folded": folded.layerscale_folded,
        "parity": parity,
        "target_keys": len(res.state),
        "meta": res.meta,
    }


def convert_checkpoint(src, dst, target: str, grid=None, quiet: bool = False, **options) -> dict:
    """Python API of the CLI: ``convert_checkpoint("backbone.pth", "d2.pth", "detectron2", grid=(64, 64))``.

    ``options``: ``src_format``, ``patch_size``, ``num_heads``, ``norm_eps``, ``drop_registers``, ``keep_tokens``,
    ``no_check``, ``tol``, ``unsafe_load`` (as the flags). Returns the summary dict (``meta``, ``parity``, ...);
    raises :class:`ConversionError` on any problem, writing nothing.
    """
    args = build_parser().parse_args(["--src", os.fspath(src), "--dst", os.fspath(dst), "--target", target])
    args.grid = list(grid) if grid is not None else None
    for key, value in options.items():
        if not hasattr(args, key) or key in ("src", "dst", "target", "grid"):
            raise TypeError(f"convert_checkpoint() got an unexpected option {key!r}")
        setattr(args, key, value)
    summary = convert(args)
    if not quiet:
        print_summary(args, summary)
    return summary


def print_summary(args, s: dict) -> None:
    a = s["arch"]
    desc = FORMAT_DESC.get(s["source_format"], "")
    print(f"source:   {args.src} (format: {s['source_format']}{': ' + desc if desc else ''})")
    print(
        f"arch:     embed_dim={a['embed_dim']} depth={a['depth']} num_heads={a['num_heads']} "
        f"patch={a['patch_size']} mlp_ratio={a['mlp_ratio']:g} norm_eps={a['norm_eps']:g} "
        f"registers={s['meta']['source_num_register_tokens']} "
        f"layerscale={'folded' if s['layerscale_folded'] else 'none'}"
    )
    print(f"position: {s['position']} -> grid {s['grid'][0]}x{s['grid'][1]}")
    print(f"params:   {s['num_params']:,} in the source backbone, {s['num_written']:,} written")
    print(
        f"keys:     {s['source_keys']} source tensors, {len(s['mapped'])} mapped, {len(s['dropped'])} dropped, "
        f"{s['target_keys']} target keys"
    )
    for key, reason in s["dropped"]:
        print(f"  dropped {key}: {reason}")
    for note in s["notes"]:
        print(f"  note: {note}")
    if s["parity"] is not None:
        print(f"check:    {s['parity'].describe()}")
    else:
        print("check:    SKIPPED (--no-check)")
    print(f"wrote:    {args.dst} (target {args.target})")


def main(argv=None) -> int:
    """Entry point. Returns 0 on success, 2 on a conversion error (argparse usage errors raise SystemExit)."""
    args = build_parser().parse_args(argv)
    try:
        summary = convert(args)
    except ConversionError as e:
        print(f"convert_ckpt: error: {e}", file=sys.stderr)
        return 2
    print_summary(args, summary)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
