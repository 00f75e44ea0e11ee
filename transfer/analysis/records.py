"""The probe tools' records in the results database (docs/evaluation.md): which numbers each protocol keeps.

One call per tool, after its own files are written; recording never raises (:func:`resultsdb.record_result`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from resultsdb import record_result

SKIP_OPTIONS = ("out", "progress")


def protocol_config(options: dict) -> dict:
    """The options that define a protocol run (output folder and progress bars left out), as JSON-able values."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if k not in SKIP_OPTIONS}


def record_dense(checkpoint: str, results: Sequence, options: dict, out: str | None = None) -> int | None:
    """``probe_dense``: ``<probe>/L<layer>/m<M>/{miou,acc,macc}`` for every result row (layers 1-based, ``M`` the
    removed top-variance dimensions)."""
    metrics = {}
    for r in results:
        for key in ("miou", "acc", "macc"):
            metrics[f"{r.probe}/L{r.layer}/m{r.remove_top_var}/{key}"] = getattr(r, key)
    random_init = bool(options.get("random_init"))
    return record_result(
        checkpoint, "probe_dense", metrics, protocol_config(options), options.get("seed"), random_init, out
    )


def record_position(checkpoint: str, json_path: str, out: str | None = None) -> int | None:
    """``position_accuracy``: from ``position_accuracy.json``, the mean top-1 over the grid, the anchors' mean, the
    chance level and every cell (``top1/g<gamma>/p<gamma_pos>``); its settings (images, size, predictor, mask
    token, grid, seed) are the protocol's config."""
    with open(json_path) as fh:
        data = json.load(fh)
    metrics = {"mean_top1": data.get("mean_top1"), "mean_anchor_top1": data.get("mean_anchor_top1")}
    metrics["chance"] = data.get("chance")
    for g, row in zip(data.get("gammas", []), data.get("top1", [])):
        for p, v in zip(data.get("gamma_pos", []), row):
            metrics[f"top1/g{g:g}/p{p:g}"] = v
    metrics = {k: (math.nan if v is None else v) for k, v in metrics.items()}
    keys = ("images", "num_images", "size", "predictor", "mask_token", "gammas", "gamma_pos", "seed", "random_init")
    setting = {k: data.get(k) for k in keys}
    if isinstance(setting["predictor"], str):  # the probe's mask seed follows the run's seed: not part of the setting
        setting["predictor"] = re.sub(r", mask seed \d+", "", setting["predictor"])
    return record_result(
        checkpoint, "position_accuracy", metrics, setting, data.get("seed"), bool(data.get("random_init")), out
    )


def record_attention(checkpoints: Sequence[str], stats: dict, options: dict, out: str | None = None) -> list:
    """``attention``: per checkpoint (``stats`` in the same order), the last layer's and the depth-mean NMI and
    mean attention distance (pixels), and each layer's (``L<i>/nmi``, ``L<i>/mad``)."""
    ids = []
    for ckpt, st in zip(checkpoints, stats.values()):
        nmi, mad = list(st["nmi"]), list(st["mad"])
        metrics = {"last/nmi": nmi[-1], "last/mad": mad[-1]}
        metrics.update({"mean/nmi": sum(nmi) / len(nmi), "mean/mad": sum(mad) / len(mad)})
        for i, (n, m) in enumerate(zip(nmi, mad)):
            metrics.update({f"L{i + 1}/nmi": n, f"L{i + 1}/mad": m})
        ids.append(record_result(ckpt, "attention", metrics, protocol_config(options), None, False, out))
    return ids


def record_cls_knn(checkpoint: str, top1: float, options: dict, out: str | None = None) -> int | None:
    """``cls_knn``: top-1 of the CLS k-NN probe on the toy texture classes."""
    random_init = bool(options.get("random_init"))
    return record_result(
        checkpoint, "cls_knn", {"top1": top1}, protocol_config(options), options.get("seed"), random_init, out
    )
