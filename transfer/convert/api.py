"""The converter's Python API (docs/protocols.md §1): :func:`convert_checkpoint` converts one ViT checkpoint for
detectron2 ViTDet, MMSeg Segmenter or timm; ``tools/convert_ckpt.py`` (:mod:`transfer.convert.cli`) maps its flags
onto the same keyword arguments.

Pipeline (one-way): load (``weights_only=True``) -> read (format reader -> canonical, validated) -> resample the
patch kernel to ``patch_size`` if needed -> fold LayerScale -> materialise positions at ``grid`` -> write the
target dict -> numeric parity check against the source -> atomic save (temp file + ``os.replace``). Any problem
raises :class:`~transfer.convert.canonical.ConversionError` with a message naming the key or the problem, and no
output file is written.
"""

from __future__ import annotations

import dataclasses
import os

from .canonical import CanonicalViT, ConversionError, fold_layerscale, pos_source_desc, resample_patch_size
from .hf_layouts import is_hf_source, read_hf
from .parity import ParityResult, check_parity
from .preflight import check_destination, check_grid, check_parity_memory
from .readers import ReadOptions, load_file, read_checkpoint
from .writers import DEFAULT_GRIDS, TARGETS, WRITERS, WriteResult

FORMAT_DESC = {
    "ours": "ssl-vit-toolkit backbone",
    "dinov2": "official DINOv2 layout",
    "dinov3": "DINOv3 ViT (official or timm layout)",
    "timm": "timm VisionTransformer state dict",
    "mae": "MAE/iBOT/DINO release layout",
}


def convert_checkpoint(
    src,
    dst,
    target: str,
    *,
    grid=None,
    src_format: str = "auto",
    patch_size: int = 16,
    num_heads: int | None = None,
    norm_eps: float | None = None,
    drop_registers: bool = False,
    keep_tokens: bool = False,
    no_check: bool = False,
    tol: float = 1e-4,
    unsafe_load: bool = False,
    quiet: bool = False,
    pos_interpolation: str = "auto",
) -> dict:
    """Convert ``src`` into ``dst`` for ``target`` (``"detectron2"``, ``"mmseg"`` or ``"timm"``), e.g.
    ``convert_checkpoint("backbone.pth", "d2.pth", "detectron2", grid=(64, 64))``.

    The options are those of ``tools/convert_ckpt.py`` (``grid`` defaults to :data:`DEFAULT_GRIDS`); unless
    ``quiet``, :func:`print_summary` prints what was done. Returns the summary dict (``src``, ``dst``, ``target``,
    ``meta``, ``parity``, ...); raises :class:`ConversionError` on any problem, writing nothing.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    grid = _check_request(src, dst, target, grid, patch_size, keep_tokens)
    opts = ReadOptions(
        src_format=src_format, num_heads=num_heads, norm_eps=norm_eps, pos_interpolation=pos_interpolation
    )
    c = read_source(src, opts, unsafe_load)
    n_params = c.num_params()
    if not no_check:
        extra = 1 + c.num_registers  # at most a CLS and the registers ride along in the parity forward
        check_parity_memory(grid, extra, c.arch.embed_dim, c.arch.num_heads, n_params)
    c = resample_patch_size(c, patch_size)
    folded = fold_layerscale(c)
    res = WRITERS[target](folded, grid, keep_tokens=keep_tokens, drop_registers=drop_registers)
    parity = None
    if not no_check:
        parity = check_parity(target, c, res.state, res.meta, tol=tol)
        if not parity.ok:
            raise ConversionError(f"numeric check failed: {parity.describe()}; nothing written")
    res.meta["source_file"] = os.path.basename(os.path.normpath(src))

    from pretrain.io import atomic_torch_save

    atomic_torch_save(res.obj, dst)
    summary = _summary(src, dst, target, grid, n_params, c, folded, res, parity)
    if not quiet:
        print_summary(summary)
    return summary


def read_source(src: str, opts: ReadOptions, unsafe_load: bool = False) -> CanonicalViT:
    """Any source -> canonical model: a Hugging Face directory / ``.safetensors`` file is first renamed into its
    official layout (:mod:`.hf_layouts`, with its config's heads, eps and position rule), then read like a file."""
    hf = None
    if is_hf_source(src):
        obj, fmt, hf = read_hf(src, opts.num_heads)
        if hf:
            opts = dataclasses.replace(
                opts,
                src_format=fmt,
                num_heads=hf["num_heads"],
                norm_eps=hf["norm_eps"] if opts.norm_eps is None else opts.norm_eps,
                pos_interpolation=(hf["pos_interpolation"] or "auto")
                if opts.pos_interpolation == "auto"
                else opts.pos_interpolation,
                given_by="the Hugging Face config",
            )
    else:
        obj = load_file(src, unsafe_load=unsafe_load)
    c, _ = read_checkpoint(obj, opts)
    if hf:
        c.notes[:0] = [f"Hugging Face {hf['model_type']} read as {c.source_format}"] + list(hf["notes"])
        c.dropped[:0] = list(hf["dropped"])
        if hf.get("mean") and hf.get("std"):
            c.mean, c.std = list(hf["mean"]), list(hf["std"])
    return c


def _check_request(src: str, dst: str, target: str, grid, patch_size: int, keep_tokens: bool) -> tuple[int, int]:
    """Refuse requests that cannot work before reading anything (:mod:`.preflight`); the target grid."""
    if target not in WRITERS:
        raise ConversionError(f"unknown target {target!r}; choose one of {TARGETS}")
    if os.path.exists(dst) and os.path.realpath(dst) == os.path.realpath(src):
        raise ConversionError("--dst must differ from --src")
    if patch_size < 1:
        raise ConversionError(f"--patch-size must be positive, got {patch_size}")
    grid = check_grid(grid if grid else DEFAULT_GRIDS[target])
    if keep_tokens and target == "timm":
        raise ConversionError("--keep-tokens applies to --target detectron2 and mmseg (timm keeps tokens anyway)")
    check_destination(dst)
    return grid


def _src_names(c: CanonicalViT, names) -> str:
    out = []
    for n in names:
        s = c.origin.get(n, n)
        out.append(s if isinstance(s, str) else ", ".join(s))
    return ", ".join(dict.fromkeys(out))


def _used_source_keys(c: CanonicalViT, folded: CanonicalViT, res: WriteResult) -> list[str]:
    """The source keys that ended up in the target (in source key names)."""
    used = set()
    for name, _ in res.mapped:
        if name == "pos":
            used.add(c.origin.get("pos_field" if c.pos_field is not None else "pos_embed", "pos"))
            if c.cls_pos is not None and "cls_pos_embed" in c.source_keys:
                used.add("cls_pos_embed")
            continue
        used.add(c.origin.get(name, name))
    if folded.layerscale_folded:
        used |= {c.origin.get(k, k) for k in c.state if k.endswith((".ls1.gamma", ".ls2.gamma"))}
    return sorted(used & set(c.source_keys))


def _summary(
    src: str,
    dst: str,
    target: str,
    grid,
    num_params: int,
    c: CanonicalViT,
    folded: CanonicalViT,
    res: WriteResult,
    parity: ParityResult | None,
) -> dict:
    """What :func:`print_summary` prints, in source key names."""
    dropped = list(c.dropped) + [(_src_names(c, [name]), reason) for name, reason in res.dropped]
    return {
        "src": src,
        "dst": dst,
        "target": target,
        "source_format": c.source_format,
        "arch": c.arch.as_dict(),
        "num_params": num_params,  # before any kernel resampling
        "num_written": int(sum(t.numel() for t in res.state.values())),
        "source_keys": len(c.source_keys),
        "mapped": _used_source_keys(c, folded, res),
        "dropped": dropped,
        "notes": c.notes + res.notes,
        "position": pos_source_desc(c),
        "grid": list(grid),
        "layerscale_folded": folded.layerscale_folded,
        "parity": parity,
        "target_keys": len(res.state),
        "meta": res.meta,
    }


def print_summary(s: dict) -> None:
    """Print a summary returned by :func:`convert_checkpoint`."""
    a = s["arch"]
    desc = FORMAT_DESC.get(s["source_format"], "")
    print(f"source:   {s['src']} (format: {s['source_format']}{': ' + desc if desc else ''})")
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
    print(f"wrote:    {s['dst']} (target {s['target']})")
