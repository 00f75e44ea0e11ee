"""The records written where training runs produce their final numbers (one call at each such point):
pretraining's end, ViTDet's ``metrics_final.json``, Segmenter's ``metrics_final.json``. Each never raises."""

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
