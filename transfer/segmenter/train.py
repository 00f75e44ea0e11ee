"""Fine-tune a converted ViT with the Segmenter linear decoder on ADE20K (MMSegmentation / MMEngine Runner).

    python -m transfer.segmenter.train CONFIG --init CKPT [--work-dir DIR] [--lr X] [--wd Y] [--seed S]
        [--resume] [--launcher none|pytorch] [--data-root DIR] [--max-iters N] [--amp]
        [--cfg-options key=value ...]

One process per GPU (``torchrun ... -m transfer.segmenter.train ... --launcher pytorch``); tools/train_ade.sh
does that for you and runs sweeps. Everything derived from the command line is set here, after the config
and ``--cfg-options`` are merged, so that it cannot drift:

* per-GPU batch = ``total_batch_size // world_size`` (error if not divisible);
* every ``PolyLR``: ``eta_min = min_lr_ratio * lr`` of the final lr, ``end = max_iters``;
* the backbone loads ``--init`` (checked against the checkpoint's metadata, verified tensor by tensor before
  the first iteration);
* ``data_root`` goes to all three datasets; ``num_classes = None`` (toy) is read from the data.

At the end ``<work_dir>/metrics_final.json`` holds the final validation's mIoU, aAcc and mAcc (percent, as
mmseg's IoUMetric reports them) and one summary line is printed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

from pretrain.io import METRICS_FINAL, atomic_write_json
from transfer.segmenter import integration

METRIC_KEYS = ("mIoU", "aAcc", "mAcc")
METRICS_FILE = METRICS_FINAL


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line interface (see the module docstring)."""
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(
        prog="python -m transfer.segmenter.train",
        description="Segmenter linear decoder fine-tuning on ADE20K (MMSegmentation).",
    )
    p.add_argument("config", help="MMEngine config, e.g. configs/ade20k/segmenter_linear_vit_b_160k.py")
    p.add_argument("--init", required=True, help="converted MMSeg-target backbone checkpoint (tools/convert_ckpt.py)")
    p.add_argument("--work-dir", help="output folder (default: outputs/ade20k/<config name>)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (the poly schedule ends at min_lr_ratio x lr)")
    p.add_argument("--wd", type=float, help="AdamW weight decay")
    p.add_argument("--seed", type=int, help="random seed (default: the config's randomness.seed)")
    p.add_argument("--max-iters", type=int, help="override train_cfg.max_iters (the poly schedule follows)")
    p.add_argument(
        "--data-root",
        help="dataset root (default: $ADE20K_ROOT, for the toy config $TOY_ADE_ROOT, else the config's data_root)",
    )
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    p.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper; needs CUDA)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        default={},
        help="config overrides key=value (e.g. train_dataloader.num_workers=2 model.test_cfg.mode=whole)",
    )
    return p.parse_args(argv)


def world_size_for(launcher: str) -> int:
    """Number of training processes the launcher will start (1 without a launcher)."""
    if launcher == "none":
        return 1
    for key in ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    raise RuntimeError(f"--launcher {launcher}: cannot determine the world size (WORLD_SIZE is not set)")


def _apply_schedule(cfg, args) -> tuple[float, float, int]:
    """lr, weight decay, AMP and iterations from the command line; the poly schedule ends at ``max_iters`` and at
    ``min_lr_ratio x lr``. Returns ``(lr, min_lr_ratio, max_iters)``."""
    opt = cfg.optim_wrapper.optimizer
    if args.lr is not None:
        opt["lr"] = args.lr
    if args.wd is not None:
        opt["weight_decay"] = args.wd
    if args.amp:
        cfg.optim_wrapper["type"] = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.max_iters is not None:
        cfg.train_cfg["max_iters"] = args.max_iters
    max_iters = int(cfg.train_cfg["max_iters"])
    if cfg.train_cfg.get("val_interval", max_iters) > max_iters:
        cfg.train_cfg["val_interval"] = max_iters
    lr = float(opt["lr"])
    min_lr_ratio = float(cfg.get("min_lr_ratio", 0.1))
    schedulers = cfg.param_scheduler if isinstance(cfg.param_scheduler, list) else [cfg.param_scheduler]
    n_poly = 0
    for sched in schedulers:
        if sched.get("type") == "PolyLR":
            sched["eta_min"] = min_lr_ratio * lr
            sched["end"] = max_iters
            n_poly += 1
    if n_poly == 0:
        raise ValueError("the config has no PolyLR scheduler (the protocol's schedule)")
    return lr, min_lr_ratio, max_iters


def _apply_batch_per_process(cfg, launcher: str) -> tuple[int, int]:
    """``train_dataloader.batch_size = total_batch_size // world``. Returns ``(world, total)``."""
    world = world_size_for(launcher)
    total = int(cfg.get("total_batch_size", cfg.train_dataloader.batch_size))
    if total % world:
        raise ValueError(f"total_batch_size {total} is not divisible by the world size {world}")
    cfg.train_dataloader["batch_size"] = total // world
    return world, total


def _data_root(cfg, args) -> str:
    """``--data-root``, else ``--cfg-options data_root=``, else ``$<data_root_env>`` (``ADE20K_ROOT``, the toy
    config's ``TOY_ADE_ROOT``), else the config's ``data_root``; checked to hold images/ (transfer/dataset_roots.py).
    A note goes to stderr when only the other config's variable is set."""
    from transfer.dataset_roots import ADE_VARIABLES, ignored_variable_note, missing_root_message, resolve_root

    variable = cfg.get("data_root_env", "ADE20K_ROOT")
    explicit = args.data_root or (args.cfg_options or {}).get("data_root")
    name = "--data-root" if args.data_root else "--cfg-options data_root"
    root, where = resolve_root(variable, cfg.get("data_root"), explicit, name)
    note = None if explicit else ignored_variable_note(variable, ADE_VARIABLES)
    if note:
        print(f"[segmenter] note: {note}; using {root}", file=sys.stderr, flush=True)
    if not os.path.isdir(os.path.join(root, "images")):
        needs = "images/{training,validation} and annotations/{training,validation}"
        raise FileNotFoundError(missing_root_message("dataset root", root, where, variable, needs, note))
    return root


def _apply_data(cfg, args) -> int:
    """The dataset root (:func:`_data_root`) in every loader, and the classes. Returns the class count."""
    data_root = cfg["data_root"] = _data_root(cfg, args)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader):
            cfg[loader].dataset["data_root"] = data_root
    num_classes = cfg.get("num_classes")
    if num_classes is None:
        num_classes = integration.infer_num_classes(data_root)
        cfg["num_classes"] = num_classes
    integration.set_dataset_classes(cfg, int(num_classes))
    return int(num_classes)


def _apply_runtime(cfg, args) -> None:
    """Work dir, launcher, seed, resume, atomic checkpoint writes; gloo without CUDA."""
    import torch

    cfg.work_dir = (
        args.work_dir
        or cfg.get("work_dir")
        or os.path.join("outputs", "ade20k", os.path.splitext(os.path.basename(args.config))[0])
    )
    cfg.launcher = args.launcher
    if args.seed is not None:
        cfg["randomness"] = dict(cfg.get("randomness") or {}, seed=args.seed)
    cfg.resume = bool(args.resume)
    cfg.load_from = None
    from transfer.segmenter.checkpoint_io import use_atomic_checkpoints

    use_atomic_checkpoints(cfg)  # a kill during a save never leaves a partial iter_N.pth (checkpoint_io.py)
    if not torch.cuda.is_available():
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"


def prepare_config(args: argparse.Namespace):
    """Load the config and apply every command-line-derived setting. Returns ``(cfg, info)``."""
    from mmengine.config import Config

    integration.setup_mmseg()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    lr, min_lr_ratio, max_iters = _apply_schedule(cfg, args)
    world, total = _apply_batch_per_process(cfg, args.launcher)
    num_classes = _apply_data(cfg, args)
    arch = integration.apply_checkpoint_to_config(cfg, args.init)
    _apply_runtime(cfg, args)
    info = dict(
        lr=lr,
        eta_min=min_lr_ratio * lr,
        weight_decay=float(cfg.optim_wrapper.optimizer.get("weight_decay", 0.0)),
        seed=cfg.randomness.get("seed"),
        max_iters=max_iters,
        world_size=world,
        batch_per_gpu=total // world,
        total_batch_size=total,
        num_classes=num_classes,
        arch={k: v for k, v in arch.items() if k != "meta"},
    )
    return cfg, info


def _make_metrics_hook():
    from mmengine.hooks import Hook

    class FinalMetricsHook(Hook):
        """Remember the start iteration and the metrics (and iteration) of the latest validation."""

        priority = "LOWEST"

        def __init__(self) -> None:
            self.start_iter: int | None = None
            self.metrics: dict[str, Any] | None = None
            self.metrics_iter: int | None = None

        def before_train(self, runner) -> None:
            self.start_iter = runner.iter

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.metrics = dict(metrics or {})
            self.metrics_iter = runner.iter

    return FinalMetricsHook()


def _to_float(v: Any) -> float:
    try:
        return round(float(v), 4)  # IoUMetric reports float32 percentages rounded to 2 decimals
    except (TypeError, ValueError):
        return float("nan")


def _remove_stale_temporaries(work_dir: str) -> None:
    """On the first process: remove what an interrupted checkpoint write left in ``work_dir`` (temporary files, a
    cut ``last_checkpoint``), saying so."""
    from transfer.segmenter.checkpoint_io import remove_stale_temporaries, repair_last_checkpoint

    if int(os.environ.get("RANK", "0")) == 0 and os.path.isdir(work_dir):
        for path in remove_stale_temporaries(work_dir):
            print(f"[segmenter] removed {path}, left by an interrupted checkpoint write", flush=True)
        repaired = repair_last_checkpoint(work_dir)
        if repaired:
            print(f"[segmenter] {repaired}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, validate at the end, write ``metrics_final.json``. Returns the written record."""
    args = parse_args(argv)
    cfg, info = prepare_config(args)

    from mmengine.dist import get_rank
    from mmengine.runner import Runner

    t0 = time.time()
    _remove_stale_temporaries(cfg.work_dir)
    runner = Runner.from_cfg(cfg)
    hook = _make_metrics_hook()
    runner.register_hook(hook)
    runner.train()
    metrics = hook.metrics
    if metrics is None or hook.metrics_iter != runner.iter:
        # e.g. resumed a run that had already reached max_iters: validate the final weights now.
        metrics = runner.val_loop.run()
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise RuntimeError(f"validation did not report {missing}; got {sorted(metrics)}")
    record = {k: _to_float(metrics[k]) for k in METRIC_KEYS}
    record.update(
        iter=int(runner.iter),
        start_iter=int(hook.start_iter if hook.start_iter is not None else 0),
        config=os.path.abspath(args.config),
        init=os.path.abspath(args.init),
        work_dir=os.path.abspath(cfg.work_dir),
        wall_s=round(time.time() - t0, 1),
        **info,
    )
    if get_rank() == 0:
        path = os.path.join(cfg.work_dir, METRICS_FILE)
        atomic_write_json(record, path)
        from resultsdb.hooks import record_segmenter  # the results database (docs/evaluation.md); never raises

        record_segmenter(record)
        finite = all(math.isfinite(record[k]) for k in METRIC_KEYS)
        print(
            f"[segmenter] {os.path.basename(args.config)} lr={info['lr']:g} wd={info['weight_decay']:g} "
            f"seed={info['seed']} iter={record['iter']}: mIoU {record['mIoU']:.2f}  aAcc {record['aAcc']:.2f}  "
            f"mAcc {record['mAcc']:.2f}{'' if finite else '  (NON-FINITE)'} -> {path}",
            flush=True,
        )
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
