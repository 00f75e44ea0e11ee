"""Pretraining entry point: ``python -m pretrain.engine.train [CONFIG.yaml ...] [key=value ...]``.

One process per GPU (``torchrun``; DDP with NCCL on GPU, gloo on CPU) or a single process. Resumes from the
newest checkpoint in ``train.output_dir``; checkpoints periodically and on SIGTERM/SIGINT; exports the teacher
backbone to ``<output_dir>/backbone.pth`` at the end (``--export-only`` exports from the newest checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as du
from ..data.device_stage import device_augmentation
from ..data.folder import ImageFolderDataset
from ..export import export_backbone
from ..methods import PretrainingMethod, build_method, method_class
from .checkpoint import latest_checkpoint, remove_stale_temporaries, save_checkpoint, set_rng_state
from .config import ConfigError, config_hash, load_config, to_container
from .init_from import init_backbones_from
from .metrics import MetricWriter, format_seconds
from .optim import apply_schedules, build_optimizer, clip_gradients
from .resume import ResumeError, check_resume_config, read_newest_checkpoint
from .sampler import PassIndexedDataset, StreamSampler
from .schedules import build_schedules

logger = logging.getLogger("pretrain")


class TrainingStopped(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------- processes
def adopt_slurm_environment(env=os.environ) -> int:
    """Under ``srun`` without torchrun (SLURM_NTASKS > 1, MASTER_ADDR set, no RANK), set torch.distributed's
    RANK / WORLD_SIZE / LOCAL_RANK from SLURM's variables. Returns the world size. Runs before the config is
    loaded, since the lr scaling rule needs the world size."""
    if "RANK" not in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    return int(env.get("WORLD_SIZE", "1"))


def setup_distributed() -> torch.device:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), or SLURM's when launched by srun."""
    env = os.environ
    world = adopt_slurm_environment(env)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(env.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def setup_logging(output_dir: str) -> None:
    level = logging.INFO if du.is_main() else logging.WARNING
    handlers = [logging.StreamHandler(sys.stdout)]
    if du.is_main():
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "log.txt")))
    logging.basicConfig(
        level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", handlers=handlers, force=True
    )


# ------------------------------------------------------------------------------------------- data
def build_dataset(cfg, validate: bool = True, images: ImageFolderDataset | None = None):
    """The configured method's dataset over the image source ``train.data`` (or ``images``)."""
    if images is None:
        images = ImageFolderDataset(cfg.train.data, validate=validate)
    return method_class(cfg.method).build_dataset(cfg, images)


def build_loader(cfg, dataset, start_iteration: int):
    """Batches from iteration ``start_iteration`` on, collated by the configured method."""
    sampler = StreamSampler(
        len(dataset), cfg.train.batch_size_per_gpu, du.rank(), du.world_size(), cfg.train.seed, start_iteration
    )
    workers = cfg.train.num_workers
    return torch.utils.data.DataLoader(
        PassIndexedDataset(dataset),
        batch_size=cfg.train.batch_size_per_gpu,
        sampler=sampler,
        num_workers=workers,
        collate_fn=method_class(cfg.method).build_collator(cfg),
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=False,
        worker_init_fn=_ignore_stop_signals,
        prefetch_factor=2 if workers > 0 else None,
    )


def _ignore_stop_signals(worker_id: int) -> None:
    """Data-loader workers ignore SIGTERM/SIGINT: a signal to the whole process group (SLURM preemption,
    ``timeout``, ``kill`` of torchrun) must reach the main process's handler, which checkpoints and then shuts
    the workers down, instead of killing the workers first and the main process with them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def to_device(batch: dict, device: torch.device, augment=None) -> dict:
    """The batch's tensors on ``device``; then ``augment`` (the device stage of ``crops.photometric_on=device``,
    :mod:`pretrain.data.device_stage`, which runs under no_grad) when given."""
    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return augment(batch) if augment is not None else batch


# ------------------------------------------------------------------------------------------- stepping
def autocast_context(cfg, device):
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, ddp_model, optimizer, batch, values: dict, cfg, device) -> tuple[dict, dict, bool]:
    """One optimisation step. Returns (loss terms as floats, gradient norms before clipping per student module
    and ``"total"``, whether the step was applied)."""
    apply_schedules(optimizer, values["lr"], values["wd"], values["last_layer_lr"])
    with autocast_context(cfg, device):
        out = ddp_model(batch, values)
    loss = out["loss"]
    finite = torch.isfinite(loss).float()
    du.all_reduce_sum(finite)
    optimizer.zero_grad(set_to_none=True)
    if finite.item() < du.world_size():  # every process skips together
        return {k: float("nan") for k in out}, {"total": float("nan")}, False
    loss.backward()
    per_module = cfg.optim.clip_grad_scope == "per_module"
    grad_norms = clip_gradients(model.trainable_modules(), cfg.optim.clip_grad, per_module)
    optimizer.step()
    model.after_step(values)
    names = ("loss", *model.loss_terms)
    terms = torch.stack([out[k].detach().float() for k in names])
    du.all_reduce_sum(terms)
    terms = (terms / du.world_size()).tolist()
    return dict(zip(names, terms)), grad_norms, True


class StopSignal:
    """Records SIGTERM/SIGINT; the loop checkpoints and exits at the end of the current iteration."""

    def __init__(self, device: torch.device):
        self.signum = None
        self.device = device  # NCCL all-reduces CUDA tensors only
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)

    def requested(self) -> bool:
        flag = torch.tensor(1.0 if self.signum is not None else 0.0, device=self.device)
        du.all_reduce_sum(flag)  # a signal on any process stops all of them
        return flag.item() > 0


def iterations_per_epoch(cfg, dataset_len: int) -> int:
    if cfg.train.epoch_length > 0:
        return cfg.train.epoch_length
    total_batch = cfg.train.batch_size_per_gpu * du.world_size()
    n = dataset_len // total_batch
    if n < 1:
        raise ValueError(f"the dataset ({dataset_len} images) is smaller than one total batch ({total_batch})")
    return n


def describe_schedule(cfg, iters_per_epoch: int, total: int, dataset_len: int) -> str:
    """The epoch reading and what it means in iterations (``total``, the schedules' length) and images, for the
    start-up log."""
    epochs = cfg.optim.epochs
    images = total * cfg.train.batch_size_per_gpu * du.world_size()
    if cfg.train.epoch_length > 0:
        reading = f"epoch = {iters_per_epoch} iterations (train.epoch_length)"
    else:
        reading = f"epoch = one pass over the data ({iters_per_epoch} iterations)"
    effective = method_class(cfg.method).effective_epochs(cfg)
    return (
        f"{reading}; {epochs:g} epochs = {total} iterations, {images} images seen "
        f"({images / max(dataset_len, 1):.1f} passes over the data, {effective:.1f} effective epochs)"
    )


@dataclass
class Run:
    """What the loop needs: the config, the data, the schedules, the model (and its DDP wrapper) and where to start."""

    cfg: DictConfig
    device: torch.device
    images: ImageFolderDataset
    dataset: torch.utils.data.Dataset
    sched: dict
    stop_at: int
    model: PretrainingMethod
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    start: int


def _resume(cfg, model, optimizer, device) -> tuple[int, list]:
    """Load the newest readable checkpoint of ``train.output_dir`` after checking its config against ``cfg``;
    returns the next iteration (0 without a checkpoint) and the allowed config changes."""
    found = read_newest_checkpoint(cfg.train.output_dir, map_location=device)
    if found is None:
        return 0, []
    path, state = found
    changes = check_resume_config(state.get("config") or {}, to_container(cfg), path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ResumeError(f"{path} does not fit the configured model ({reason})") from None
    set_rng_state(state["rng"])
    for key, old, new in changes:
        logger.info("resume: %s changed from %r to %r (allowed)", key, old, new)
    logger.info("resumed from %s (next iteration %d)", path, state["iteration"] + 1)
    return state["iteration"] + 1, changes


def _save_config(cfg, start: int, changes: list) -> None:
    """``config.yaml`` of a new run; a resumed run keeps it and writes ``config.resume-<iteration>.yaml`` beside it
    when its config differs in allowed keys (main process only)."""
    out = cfg.train.output_dir
    first = os.path.join(out, "config.yaml")
    if start == 0 or not os.path.exists(first):
        OmegaConf.save(cfg, first)
    elif changes:
        OmegaConf.save(cfg, os.path.join(out, f"config.resume-{start:08d}.yaml"))


def prepare_run(cfg, device: torch.device) -> Run:
    """Logging, the saved config, data, schedules, model and optimiser (resumed when a checkpoint exists), DDP."""
    out_dir = cfg.train.output_dir
    setup_logging(out_dir)
    torch.manual_seed(cfg.train.seed)
    if du.is_main():
        for stale in remove_stale_temporaries(out_dir):
            logger.info("removed %s, left by an interrupted checkpoint write", stale)
    # headers only: a full decode of every image would keep the other processes waiting for minutes on ImageNet
    images = ImageFolderDataset(cfg.train.data, validate="header" if du.is_main() else False)
    dataset = build_dataset(cfg, images=images)
    ipe = iterations_per_epoch(cfg, len(dataset))
    sched = build_schedules(cfg, ipe)
    total = sched.pop("total")
    sched.update(method_class(cfg.method).schedules(cfg, ipe, total))
    stop_at = min(total, cfg.train.max_iterations) if cfg.train.max_iterations > 0 else total
    total_batch = cfg.train.batch_size_per_gpu * du.world_size()
    logger.info(
        "data: %d images (%s), skipped %d unreadable; %d processes x batch %d = %d; %s; lr %.3g",
        len(dataset),
        cfg.train.data,
        images.num_skipped,
        du.world_size(),
        cfg.train.batch_size_per_gpu,
        total_batch,
        describe_schedule(cfg, ipe, total, len(dataset)),
        cfg.optim.lr,
    )
    model = build_method(cfg).to(device)
    optimizer = build_optimizer(model.trainable_modules(), cfg)
    start, changes = _resume(cfg, model, optimizer, device)
    if start == 0 and cfg.model.get("init_from"):
        for line in init_backbones_from(model, str(cfg.model.init_from)):
            logger.info(line)
    if du.is_main():
        _save_config(cfg, start, changes)
    ddp_model = model
    if du.is_dist():
        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    n_params = sum(p.numel() for p in model.backbone_to_export().parameters())
    logger.info(
        "method %s, backbone %s: %.2fM parameters; config hash %s",
        cfg.method,
        cfg.model.arch,
        n_params / 1e6,
        config_hash(cfg),
    )
    return Run(cfg, device, images, dataset, sched, stop_at, model, ddp_model, optimizer, start)


def _log_iteration(run: Run, writer: MetricWriter, monitor, it: int, terms: dict, gnorms: dict, values: dict):
    """Console line, metrics.jsonl and TensorBoard for one iteration; the method's health warning."""
    scalars = dict(terms, grad_norm=gnorms["total"], **values)
    scalars.update({f"grad_norm_{k}": v for k, v in gnorms.items() if k != "total"})
    if run.device.type == "cuda":
        scalars["memory_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    logger.info(writer.write(it, scalars, run.cfg.train.batch_size_per_gpu * du.world_size()))
    warning = monitor.update(it, terms) if monitor is not None else None
    if warning:
        logger.warning("iteration %d: %s", it, warning)
        writer.log_event(it, **{monitor.event: True})


def _skip_nonfinite(run: Run, writer: MetricWriter, it: int, in_a_row: int) -> None:
    """Report a skipped step; stop the run after ``train.max_nonfinite`` in a row."""
    logger.warning("iteration %d: non-finite loss, step skipped (%d in a row)", it, in_a_row)
    writer.log_event(it, nonfinite_loss=True)
    if in_a_row >= run.cfg.train.max_nonfinite:
        newest = latest_checkpoint(run.cfg.train.output_dir)
        kept = f"The newest checkpoint, {newest}, is kept." if newest else "No checkpoint was written."
        raise TrainingStopped(
            f"{in_a_row} non-finite losses in a row (last at iteration {it}); lower optim.base_lr, check the data, "
            f"or use train.precision=fp32. {kept}"
        )


def _checkpoint(run: Run, it: int):
    """Write a checkpoint (main process) and wait for every process; returns its path on the main process."""
    path = None
    if du.is_main():
        cfg = run.cfg
        path = save_checkpoint(
            cfg.train.output_dir, it, run.model, run.optimizer, to_container(cfg), keep=cfg.train.keep_checkpoints
        )
    if du.is_dist():
        dist.barrier()
    return path


def train(cfg) -> dict:
    """Run (or resume) pretraining as configured. Returns a summary dict."""
    run = prepare_run(cfg, setup_distributed())
    model, start, stop_at = run.model, run.start, run.stop_at
    writer = MetricWriter(cfg.train.output_dir, stop_at, start, enabled=du.is_main())
    if run.images.num_skipped:
        writer.log_event(start, skipped_files=run.images.num_skipped)
    stopper = StopSignal(run.device)
    monitor = model.health_monitor(run.sched)
    nonfinite, it, last_saved = 0, start, None
    t_start = time.perf_counter()
    augment = device_augmentation(cfg)
    try:
        loader = iter(build_loader(cfg, run.dataset, start)) if start < stop_at else iter(())
        model.train()
        for it in range(start, stop_at):
            batch = to_device(next(loader), run.device, augment)
            values = {k: schedule[it] for k, schedule in run.sched.items()}
            terms, gnorms, ok = train_step(model, run.ddp_model, run.optimizer, batch, values, cfg, run.device)
            if not ok:
                nonfinite += 1
                _skip_nonfinite(run, writer, it, nonfinite)
                continue
            nonfinite = 0
            if du.is_main() and (it % cfg.train.log_every == 0 or it == stop_at - 1):
                _log_iteration(run, writer, monitor, it, terms, gnorms, values)
            stop = stopper.requested()
            if stop or (it + 1) % cfg.train.checkpoint_every == 0 or it == stop_at - 1:
                last_saved = _checkpoint(run, it)
            if stop:
                logger.warning(
                    "signal %s: checkpoint written at iteration %d (%s); rerun the same command to resume",
                    stopper.signum,
                    it,
                    last_saved,
                )
                return {"stopped": True, "iteration": it, "checkpoint": last_saved}
    finally:
        stopper.restore()
        writer.close()
    backbone_path = os.path.join(cfg.train.output_dir, "backbone.pth")
    if du.is_main():
        _export(model, cfg, it)
        elapsed = format_seconds(time.perf_counter() - t_start)
        logger.info(
            "done: %d iterations in %s; backbone (method %s) exported to %s",
            stop_at - start,
            elapsed,
            model.name,
            backbone_path,
        )
        from resultsdb.hooks import record_pretraining  # the results database (docs/evaluation.md); never raises

        record_pretraining(cfg, backbone_path, model.loss_terms)
    return {"stopped": False, "iteration": it, "backbone": backbone_path}


def _export(model: PretrainingMethod, cfg, iteration: int) -> str:
    """``<output_dir>/backbone.pth`` of the method's backbone with its metadata, then the method's extra files."""
    path = os.path.join(cfg.train.output_dir, "backbone.pth")
    export_backbone(
        model.backbone_to_export(), path, config_hash=config_hash(cfg), iteration=iteration, method=cfg.method
    )
    model.export_extras(cfg.train.output_dir)
    return path


def export_only(cfg) -> str:
    """Export the backbone of the newest readable checkpoint in ``train.output_dir`` (unreadable ones skipped, as
    on resume)."""
    found = read_newest_checkpoint(cfg.train.output_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {cfg.train.output_dir}/checkpoints")
    model = build_method(cfg)
    model.load_state_dict(found[1]["model"])
    return _export(model, cfg, found[1]["iteration"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("args", nargs="*", help="YAML config files and key=value overrides, in order")
    parser.add_argument("--export-only", action="store_true", help="export backbone.pth from the newest checkpoint")
    ns = parser.parse_args(argv)
    files = [a for a in ns.args if "=" not in a]
    overrides = [a for a in ns.args if "=" in a]
    try:
        cfg = load_config(files, overrides, world_size=adopt_slurm_environment(os.environ))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ns.export_only:
        print(export_only(cfg))
        return 0
    try:
        result = train(cfg)
    except TrainingStopped as e:
        logger.error(str(e))
        return 3
    except ResumeError as e:
        logger.error("cannot resume: %s", e)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 143 if result["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
