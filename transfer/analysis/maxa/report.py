"""``tools/probe_maxa.py``: load the backbone, build the splits, run the tasks, write and record the results."""

from __future__ import annotations

import json
import os

import torch

from .run import TASKS, Split, extract, run_task, task_targets
from .targets import load_ade_split, load_coco_split, load_depth_maps, resize_labels

COCO_TASKS = ("boundaries", "distance", "instances", "depth")


def coco_splits(adapter, coco: str, side: int, out_side: int, tasks, limits) -> dict:
    """``{task: (train Split, val Split)}`` for the COCO-format tasks; depth only where ``<coco>/depth`` exists."""
    data = {}
    for split in ("train", "val"):
        images, inst, names = load_coco_split(coco, split, side, limits[split])
        inst = torch.stack([resize_labels(m, out_side) for m in inst])
        data[split] = (extract(adapter, images), inst, names, images)
    out = {}
    for task in tasks:
        if task == "depth":
            maps = [load_depth_maps(coco, s, data[s][2], out_side) for s in ("train", "val")]
            if any(m is None for m in maps):
                continue
            out[task] = tuple(Split(data[s][0], m) for s, m in zip(("train", "val"), maps))
        else:
            out[task] = tuple(Split(data[s][0], task_targets(task, data[s][1])) for s in ("train", "val"))
    return out, data["val"]


def ade_split(adapter, ade: str, side: int, out_side: int, limits) -> tuple[Split, Split, int]:
    """Train and val splits of the semantic task and the number of classes."""
    splits = []
    for split, key in (("training", "train"), ("validation", "val")):
        images, labels = load_ade_split(ade, split, side, limits[key])
        labels = torch.stack([resize_labels(m, out_side) for m in labels])
        splits.append(Split(extract(adapter, images), labels))
    seen = torch.cat([s.targets.reshape(-1) for s in splits])
    return splits[0], splits[1], int(seen[seen != 255].max()) + 1


def write_and_record(out: str, info: dict, val, name: str, data: dict) -> list[str]:
    """``maxa_results.json`` (``info``), ``maxa_pca.png`` (first 4 validation images of the COCO split ``val``,
    if any) and the ``maxa`` record (every numeric task result but sizes and times); the paths written."""
    from resultsdb import record_result

    from .pca import save_pca_figure

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "maxa_results.json")
    with open(path, "w") as fh:
        json.dump(info, fh, indent=1)
    written = [path]
    if val is not None:
        grid = tuple(info["feature_grid"])
        written.append(save_pca_figure(val[3][:4], val[0][:4], grid, os.path.join(out, "maxa_pca.png"), name))
    skip = ("params", "seconds", "num_images")
    metrics = {f"{t}/{k}": v for t, r in info["tasks"].items() for k, v in r.items() if k not in skip}
    setting = {k: (os.path.abspath(v) if isinstance(v, str) else v) for k, v in data.items()}
    setting.update(size=info["size"], steps=info["steps"])
    record_result(info["checkpoint"], "maxa", metrics, setting, info["seed"], info["random_init"], out)
    return written


def maxa_report(
    checkpoint,
    coco,
    ade,
    out,
    tasks=None,
    size=96,
    steps=300,
    seed=0,
    random_init=False,
    max_train=None,
    max_val=None,
    progress=True,
    **read_options,
) -> list[str]:
    """``tools/probe_maxa.py``: every task of ``tasks`` (default all whose data is given) on the frozen
    ``checkpoint``; writes ``maxa_results.json`` and ``maxa_pca.png`` under ``out``, records protocol ``maxa``."""
    from ..backbones import load_adapter

    tasks = list(tasks or [t for t in TASKS if (t == "semseg" and ade) or (t != "semseg" and coco)])
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or steps < 1 or size < 8:
        raise ValueError(f"unknown tasks {unknown} (known: {list(TASKS)})" if unknown else "--steps >= 1, --size >= 8")
    adapter = load_adapter(checkpoint, image_size=size, random_init=random_init, seed=seed, **read_options)
    p = adapter.patch_size
    side = max(p, (size // p) * p)
    grids = ((side // p, side // p), (side // 8, side // 8))
    out_side, limits = 8 * (side // 8), {"train": max_train, "val": max_val}
    splits, results, val = {}, {}, None
    if coco and any(t in COCO_TASKS for t in tasks):
        splits, val = coco_splits(adapter, coco, side, out_side, [t for t in tasks if t in COCO_TASKS], limits)
    num_classes = None
    if "semseg" in tasks:
        tr, va, num_classes = ade_split(adapter, ade, side, out_side, limits)
        splits["semseg"] = (tr, va)
    for task in tasks:
        if task not in splits:
            results[task] = {"skipped": "no data (depth: no <coco>/depth folder)"}
            continue
        results[task] = run_task(task, *splits[task], grids, steps, seed, num_classes)
        if progress:
            print(f"  {task}: {results[task]}", flush=True)
    info = dict(checkpoint=os.path.abspath(checkpoint), random_init=random_init, seed=seed, size=side, steps=steps)
    info.update(feature_grid=list(grids[0]), query_grid=list(grids[1]), output_side=out_side, tasks=results)
    written = write_and_record(out, info, val, adapter.name, dict(coco=coco, ade=ade, tasks=tasks))
    lines = [
        f"{adapter.name}{' (random init)' if random_init else ''}: MAXA at {side}px, features {grids[0]}, "
        f"queries {grids[1]}, output {out_side}px, {steps} Adam steps per task"
    ]
    lines += [
        f"  {t:<11} " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
        for t, r in results.items()
    ]
    return lines + [f"wrote {w}" for w in written]
