"""The records written where training runs produce their final numbers (one call at each such point):
pretraining's end, ViTDet's ``metrics_final.json``, Segmenter's ``metrics_final.json``, the Segmenter sweep's
summary. Each never raises."""

from __future__ import annotations

import json
import logging
import os

from .record import record_result

logger = logging.getLogger(__name__)


def last_logged_row(metrics_path: str) -> dict:
    """The last JSON row of ``metrics.jsonl`` that has a ``loss`` (event rows skipped); ``{}`` if none."""
    last = {}
    try:
        with open(metrics_path) as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "loss" in row:
                    last = row
    except OSError:
        pass
    return last


def record_pretraining(cfg, backbone_path: str, loss_terms=()) -> int | None:
    """Protocol ``pretrain``: the final logged ``loss`` and ``loss_terms`` of ``metrics.jsonl`` and the iteration,
    for the exported ``backbone_path``; config: the resolved pretraining config."""
    try:
        from pretrain.engine.config import to_container

        row = last_logged_row(os.path.join(cfg.train.output_dir, "metrics.jsonl"))
        metrics = {k: row[k] for k in ("loss", *loss_terms) if k in row}
        metrics["iteration"] = row.get("iteration", -1)
        config, seed = to_container(cfg), cfg.train.get("seed")
    except Exception as e:  # a record is never worth a failed run
        logger.warning("results database: pretraining not recorded (%r)", e)
        return None
    return record_result(backbone_path, "pretrain", metrics, config, seed, output_dir=cfg.train.output_dir)


def record_vitdet(final: dict, cfg, opts=()) -> int | None:
    """Protocol ``vitdet``: box and mask AP of ``metrics_final.json``'s content ``final``, for its init checkpoint;
    config: the config file and the command-line overrides."""
    metrics = {task: final[task] for task in ("bbox", "segm") if isinstance(final.get(task), dict)}
    config = {"config_file": final.get("config_file"), "opts": list(opts or ()), "eval_only": final.get("eval_only")}
    try:
        seed, out = cfg.train.get("seed"), cfg.train.output_dir
    except Exception:  # a config without these keys: record without them
        seed, out = None, None
    return record_result(final.get("init_checkpoint"), "vitdet", metrics, config, seed, output_dir=out)


def record_segmenter(final: dict) -> int | None:
    """Protocol ``segmenter``: mIoU, aAcc, mAcc of ``metrics_final.json``'s content ``final`` for its init
    checkpoint; config: the config file, lr, weight decay, schedule and batch size; the seed tells repeats apart."""
    metrics = {k: final[k] for k in ("mIoU", "aAcc", "mAcc") if k in final}
    keys = ("config", "lr", "weight_decay", "max_iters", "total_batch_size", "num_classes")
    config = {k: final.get(k) for k in keys}
    return record_result(
        final.get("init"), "segmenter", metrics, config, final.get("seed"), output_dir=final.get("work_dir")
    )


def record_sweep(rows: list[dict], checkpoint: str, setting: dict, work_dir: str) -> int | None:
    """Protocol ``segmenter_sweep``: the aggregate of one ``transfer/segmenter/sweep.py`` run, from its summary
    ``rows`` (one per lr x wd point: ``<key>_mean`` / ``<key>_std`` over seeds, ``num_seeds``, ``best``). Metrics:
    the best point's (highest mean mIoU) ``best/<key>``, ``best/<key>_std``, ``best/lr``, ``best/wd``,
    ``best/num_seeds``; over the finished points the mean and population std of their mean mIoU
    (``points/mIoU_mean``, ``points/mIoU_std``) and the counts ``points`` and ``runs``. ``setting``: the config
    file, the grid and the seed count. Nothing is recorded before a point has finished."""
    import math

    done = [r for r in rows if r.get("num_seeds", 0) > 0 and math.isfinite(r.get("mIoU_mean", math.nan))]
    best = [r for r in done if r.get("best")]
    if not best:
        return None
    b = best[0]
    metrics = {f"best/{k[:-5]}": v for k, v in b.items() if k.endswith("_mean")}
    metrics.update({f"best/{k}": v for k, v in b.items() if k.endswith("_std")})
    metrics.update({"best/lr": b["lr"], "best/wd": b["wd"], "best/num_seeds": b["num_seeds"]})
    means = [r["mIoU_mean"] for r in done]
    mu = sum(means) / len(means)
    metrics.update(
        {"points/mIoU_mean": mu, "points/mIoU_std": math.sqrt(sum((m - mu) ** 2 for m in means) / len(means))}
    )
    metrics.update({"points": len(done), "runs": sum(r["num_seeds"] for r in done)})
    return record_result(checkpoint, "segmenter_sweep", metrics, setting, None, output_dir=work_dir)
