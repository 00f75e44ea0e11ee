"""Tiny pretraining configurations for tests: a 2-block ViT on 32-px crops, 3 iterations per epoch, no workers."""

from __future__ import annotations


def tiny_overrides(data: str, out: str, **extra) -> list[str]:
    """``key=value`` overrides of a tiny run reading ``data`` and writing ``out``; ``extra`` adds or replaces keys."""
    base = {
        "model.arch": "vit_pico",
        "model.drop_path_rate": 0.0,
        "crops.global_size": 32,
        "crops.local_size": 16,
        "crops.n_local": 2,
        "heads.n_prototypes": 64,
        "heads.hidden_dim": 32,
        "heads.bottleneck_dim": 16,
        "pos_field.size": "[8,8]",
        "optim.epochs": 4,
        "optim.warmup_epochs": 1,
        "optim.lr_scaling": "none",
        "train.data": data,
        "train.output_dir": out,
        "train.batch_size_per_gpu": 4,
        "train.epoch_length": 3,
        "train.num_workers": 0,
        "train.log_every": 1,
        "train.checkpoint_every": 100,
        "crops.photometric": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def short_run_overrides(**extra) -> list[str]:
    """:func:`tiny_overrides` for a 3-iteration run; ``train.data`` and ``train.output_dir`` may be in ``extra``."""
    base = {"optim.epochs": 3, "train.epoch_length": 1}
    return tiny_overrides(extra.pop("train.data", "x"), extra.pop("train.output_dir", "y"), **dict(base, **extra))
