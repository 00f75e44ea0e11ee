"""Train / evaluate ViTDet Mask R-CNN on a converted backbone (detectron2 LazyConfig; paper appendix B.2).

Usage::

    python -m transfer.vitdet.train --config-file configs/vitdet/mask_rcnn_vit_b_12ep.py --init converted.pth \\
        [--resume] [--eval-only] [--num-gpus 8 --num-machines 1 --machine-rank 0 --dist-url auto] \\
        [--output DIR] [key=value ...]

What it does, in order:

1. Loads the LazyConfig, applies ``--init`` / ``--output`` and the ``key=value`` overrides.
2. Reads the backbone's architecture from the init checkpoint (weights + ``meta``) and writes it into
   ``model.backbone.net`` (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``pretrain_img_size``,
   ``pretrain_use_cls_token``, ``use_cls_token``, ``num_register_tokens``, ``mlp_ratio``, ``qkv_bias``); an
   override that contradicts the checkpoint is an error. Without ``--init``, a resumed run reads it from its last
   checkpoint (training checkpoints carry the same ``meta``).
3. Registers the toy COCO set when a dataset name starts with ``toy_coco`` (root: ``train.toy_coco_root`` or
   ``$TOY_COCO_ROOT``), and checks that the datasets' files exist (COCO: ``$DETECTRON2_DATASETS``).
4. Trains with detectron2's ``AMPTrainer`` (CUDA and ``train.amp.enabled``) or ``SimpleTrainer`` (CPU, fp32),
   hooks: IterationTimer, LRScheduler, PeriodicCheckpointer, EvalHook (at ``train.eval_period`` and at the end)
   and PeriodicWriter(CommonMetricPrinter with ETA, JSONWriter ``metrics.json``, TensorBoard). The init
   checkpoint is loaded strictly: a missing, unexpected or wrong-shaped ``backbone.net.*`` key is an error.
   ``--resume`` continues from ``<output>/last_checkpoint`` (model, optimizer, iteration, scheduler).
5. Evaluates with ``COCOEvaluator`` (pycocotools), writes ``<output>/metrics_final.json`` (box and mask AP,
   AP50, AP75, ...) and prints ``ViTDet result: box AP .. AP50 .. AP75 .. | mask AP .. AP50 .. AP75 ..``.

Multi-GPU / multi-node: ``--num-gpus`` processes per machine through ``detectron2.engine.launch`` (NCCL on GPU,
Gloo on CPU); ``tools/train_vitdet.sh`` fills the flags from ``GPUS``/``NNODES``/``NODE_RANK``/``MASTER_*``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from pretrain.io import METRICS_FINAL, atomic_write_json
from transfer.checkpoint_compat import allow_framework_checkpoint_globals
from transfer.dataset_roots import COCO_VARIABLES, ignored_variable_note, missing_root_message, resolve_root
from transfer.vitdet.checkpoint import (
    StrictDetectionCheckpointer,
    apply_backbone_arch,
    backbone_meta,
    check_backbone_arch,
    read_backbone_arch,
)
from transfer.vitdet.data import TOY_COCO_ENV, check_datasets_available, register_toy_coco, toy_coco_split_paths

__all__ = [
    "build_parser",
    "setup_config",
    "register_datasets",
    "do_test",
    "do_train",
    "main",
    "cli",
    "summary_line",
    "METRICS_FILE",
]

logger = logging.getLogger("transfer.vitdet")

#: Written into the output folder at the end: the final COCO metrics.
METRICS_FILE = METRICS_FINAL


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser (detectron2's ``default_argument_parser`` flags plus ``--init`` and ``--output``)."""
    p = argparse.ArgumentParser(
        prog="python -m transfer.vitdet.train",
        description="ViTDet Mask R-CNN (global attention, no relative position) on a converted ViT backbone.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: key=value pairs for the LazyConfig, "
        "e.g. train.max_iter=100 dataloader.train.total_batch_size=16",
    )
    p.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig .py (configs/vitdet/*.py)")
    p.add_argument("--init", default=None, metavar="CKPT", help="converted backbone checkpoint (train.init_checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue from <output>/last_checkpoint if there is one")
    p.add_argument("--eval-only", action="store_true", help="evaluate the --init checkpoint (a full ViTDet model)")
    p.add_argument("--output", default=None, metavar="DIR", help="output folder (train.output_dir)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="rank of this machine")
    p.add_argument(
        "--dist-url",
        default="auto",
        help="tcp://MASTER_ADDR:PORT for several machines; 'auto' picks a free local port (one machine)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return p


def setup_config(args):
    """Load the LazyConfig and apply ``--init``/``--output``, the checkpoint's architecture and the overrides."""
    for o in args.opts:
        if "=" not in o:
            raise ValueError(f"config override {o!r} is not key=value (flags go before the first key=value)")
    cfg = LazyConfig.load(args.config_file)
    if args.init is not None:
        cfg.train.init_checkpoint = args.init
    if args.output is not None:
        cfg.train.output_dir = args.output
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if not cfg.train.get("output_dir"):
        cfg.train.output_dir = os.path.join(
            "outputs", "vitdet", os.path.splitext(os.path.basename(args.config_file))[0]
        )
    if not torch.cuda.is_available() and str(cfg.train.get("device", "cuda")).startswith("cuda"):
        logger.warning("CUDA is not available: training on CPU in fp32 with SimpleTrainer")
        cfg.train.device = "cpu"
    if str(cfg.train.device) == "cpu" and cfg.train.amp.enabled:
        cfg.train.amp.enabled = False  # AMPTrainer needs CUDA

    init = cfg.train.get("init_checkpoint") or ""
    arch, source = None, None
    if init:
        if not os.path.isfile(init):
            raise FileNotFoundError(f"init checkpoint {init!r} not found (downloads are not supported)")
        arch, source = read_backbone_arch(init), f"init checkpoint {init}"
    elif args.resume and _last_checkpoint(cfg.train.output_dir):
        last = _last_checkpoint(cfg.train.output_dir)
        arch, source = read_backbone_arch(last), f"last checkpoint {last}"
    if arch is not None:
        apply_backbone_arch(cfg, arch)
        cfg = LazyConfig.apply_overrides(cfg, args.opts)  # the user's overrides win ... and must agree
        check_backbone_arch(cfg, arch, source)
        _warn_grid(cfg, arch)
    elif not args.eval_only:
        logger.warning("no init checkpoint: the backbone starts from random weights")
    if cfg.dataloader.evaluator.get("output_dir", None) in (None, ""):
        cfg.dataloader.evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference")
    return cfg


def _last_checkpoint(output_dir: str) -> str | None:
    """The file named by ``<output_dir>/last_checkpoint`` (detectron2's convention), if it exists."""
    try:
        with open(os.path.join(output_dir, "last_checkpoint"), encoding="utf-8") as f:
            path = os.path.join(output_dir, f.read().strip())
    except OSError:
        return None
    return path if os.path.isfile(path) else None


def _warn_grid(cfg, arch) -> None:
    net = cfg.model.backbone.net
    pad = int(cfg.model.backbone.get("square_pad", 0) or 0)
    if pad and pad != arch["pretrain_img_size"] and not arch.get("use_rope"):  # RoPE: any grid, nothing resized
        logger.warning(
            "checkpoint position grid %s x patch %d = %d px but the model pads images to %d px: pos_embed is "
            "resized bicubically at every forward (convert at grid %d to avoid it)",
            arch["grid"],
            net.patch_size,
            arch["pretrain_img_size"],
            pad,
            pad // net.patch_size,
        )


def _dataset_names(cfg) -> list[str]:
    names = []
    for split in ("train", "test"):
        n = cfg.dataloader[split].dataset.names
        names += [n] if isinstance(n, str) else list(n)
    return names


def register_datasets(cfg, opts=()) -> None:
    """Register toy COCO sets named ``toy_coco*`` from the root of :func:`toy_coco_root`, then check that every
    dataset's files exist (COCO: below ``$DETECTRON2_DATASETS``)."""
    names = _dataset_names(cfg)
    prefixes = sorted({n.rsplit("_", 1)[0] for n in names if n.startswith("toy_coco")})
    if prefixes:
        root = toy_coco_root(cfg, opts, names)
        for prefix in prefixes:
            register_toy_coco(root, name_prefix=prefix)
    elif any(n.startswith("coco_") for n in names):
        note = ignored_variable_note("DETECTRON2_DATASETS", COCO_VARIABLES)
        if note:
            logger.warning("note: %s", note)
    check_datasets_available(names)


def toy_coco_root(cfg, opts=(), names=()) -> str:
    """The toy COCO root: ``train.toy_coco_root=`` on the command line, else ``$TOY_COCO_ROOT``, else the config's
    ``train.toy_coco_root`` (transfer/dataset_roots.py). ``FileNotFoundError`` naming the variable and the path when
    it lacks the toy set; a note when only ``DETECTRON2_DATASETS`` (the real COCO's variable) is set."""
    explicit = [o.split("=", 1)[1] for o in opts if o.startswith("train.toy_coco_root=")]
    default = cfg.train.get("toy_coco_root") or ""
    root, where = resolve_root(TOY_COCO_ENV, default, explicit[-1] if explicit else None, "train.toy_coco_root=")
    note = None if explicit else ignored_variable_note(TOY_COCO_ENV, COCO_VARIABLES)
    if note:
        logger.warning("note: %s; using %s", note, root)
    json_file, image_dir = toy_coco_split_paths(root)["train"]
    if not root or not (os.path.isfile(json_file) and os.path.isdir(image_dir)):
        needs = "annotations/instances_{train,val}.json and {train,val}/ (python tools/make_toy_data.py --out data/toy)"
        what = f"the toy COCO set of {list(names)}" if names else "the toy COCO set"
        raise FileNotFoundError(missing_root_message(what, root or ".", where, TOY_COCO_ENV, needs, note))
    return root


def do_test(cfg, model) -> dict:
    """Run COCO evaluation on ``cfg.dataloader.test``; returns ``{"bbox": {...}, "segm": {...}}`` (main process)."""
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(ret)
    return ret


def _finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def summary_line(results: dict) -> str:
    """``ViTDet result: box AP 12.3 AP50 .. AP75 .. | mask AP .. AP50 .. AP75 ..`` from COCOEvaluator results."""

    def fmt(task):
        r = results.get(task) or {}
        vals = []
        for k in ("AP", "AP50", "AP75"):
            v = r.get(k)
            vals.append(f"{k} {'n/a' if v is None or not math.isfinite(float(v)) else f'{float(v):.1f}'}")
        return " ".join(vals)

    return f"ViTDet result: box {fmt('bbox')} | mask {fmt('segm')}"


def _write_final(cfg, results: dict, iteration, args) -> None:
    if not comm.is_main_process():
        return
    out = {
        task: {k: _finite_or_none(v) for k, v in metrics.items()}
        for task, metrics in (results or {}).items()
        if isinstance(metrics, dict)
    }
    out.update(
        iteration=iteration,
        config_file=os.path.abspath(args.config_file),
        init_checkpoint=cfg.train.get("init_checkpoint") or None,
        eval_only=bool(args.eval_only),
    )
    path = os.path.join(cfg.train.output_dir, METRICS_FILE)
    atomic_write_json(out, path)
    from resultsdb.hooks import record_vitdet  # the results database (docs/evaluation.md); never raises

    record_vitdet(out, cfg, getattr(args, "opts", ()))
    line = summary_line(results or {})
    logger.info("%s (metrics: %s)", line, path)
    print(line, flush=True)


def do_train(args, cfg) -> tuple[dict, int]:
    """Build model/optimizer/loader/trainer, load init or resume, train; returns (final results, iterations done)."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    use_amp = bool(cfg.train.amp.enabled) and torch.cuda.is_available()
    trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, train_loader, optim)
    meta = backbone_meta(cfg, init_checkpoint=cfg.train.get("init_checkpoint") or None)
    checkpointer = StrictDetectionCheckpointer(model, cfg.train.output_dir, optimizer=optim, trainer=trainer, meta=meta)
    last = {}

    def test_and_keep():
        last["results"] = do_test(cfg, model)
        return last["results"]

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None),
            hooks.EvalHook(cfg.train.eval_period, test_and_keep),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )

    init = cfg.train.get("init_checkpoint") or ""
    if args.resume and checkpointer.has_checkpoint():
        checkpointer.strict = "all"
        checkpointer.resume_or_load(init, resume=True)
        # the checkpoint stores the iteration that just finished
        start_iter = trainer.iter + 1
        logger.info("resuming from %s at iteration %d", checkpointer.get_checkpoint_file(), start_iter)
    else:
        if args.resume:
            logger.info("--resume: no checkpoint in %s yet, starting from the init checkpoint", cfg.train.output_dir)
        if init:
            checkpointer.strict = "backbone"
            checkpointer.load(init, checkpointables=[])
            logger.info("loaded the backbone from %s (all backbone.net.* keys matched)", init)
        start_iter = 0
    if start_iter >= cfg.train.max_iter:
        logger.warning("start iteration %d >= train.max_iter %d: nothing to train", start_iter, cfg.train.max_iter)
    trainer.train(start_iter, cfg.train.max_iter)
    return last.get("results", {}), int(trainer.iter)  # == max_iter after a completed run


def main(args) -> dict:
    """One process's work (called by ``launch``). Returns the final COCO results (empty off the main process)."""
    allow_framework_checkpoint_globals()
    cfg = setup_config(args)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="transfer")
    register_datasets(cfg, args.opts)
    if args.eval_only:
        init = cfg.train.get("init_checkpoint") or ""
        if not init:
            raise ValueError("--eval-only needs --init <trained ViTDet checkpoint>")
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        StrictDetectionCheckpointer(model, strict="all").load(init)
        results, iteration = do_test(cfg, model), None
    else:
        results, iteration = do_train(args, cfg)
    _write_final(cfg, results, iteration, args)
    return results


def cli(argv=None) -> None:
    """Parse the command line and run :func:`main` in ``--num-gpus`` x ``--num-machines`` processes."""
    args = build_parser().parse_args(argv)
    if args.num_machines > 1 and args.dist_url == "auto":
        raise SystemExit("--dist-url tcp://MASTER_ADDR:PORT is required with --num-machines > 1")
    dist_url, folder = args.dist_url, None
    if dist_url == "auto" and args.num_machines == 1 and args.num_gpus > 1:
        folder = tempfile.mkdtemp(prefix="vitdet-rendezvous-")
        dist_url = local_rendezvous_url(folder)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=dist_url,
            args=(args,),
        )
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def local_rendezvous_url(folder: str) -> str:
    """For several processes on one machine: a ``file://`` rendezvous in ``folder`` (empty) instead of detectron2's
    ``tcp://127.0.0.1:<free port>``, whose store would listen on every interface; and the process group's sockets
    on loopback (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` = ``lo`` unless set, inherited by the workers), so
    that nothing listens beyond loopback (docs/usage.md, "Reliability")."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    return "file://" + os.path.join(folder, "store")


if __name__ == "__main__":
    cli(sys.argv[1:])
