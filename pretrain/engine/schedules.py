"""Per-iteration schedules: linear warm-up then cosine, with an optional frozen prefix (DINOv2 style)."""

from __future__ import annotations

import math


class CosineSchedule:
    """``value(it)``: 0 for ``freeze_iters``, linear ``start_warmup -> base`` over ``warmup_iters``, then cosine
    ``base -> final`` until ``total_iters``; ``final`` afterwards."""

    def __init__(self, base, final, total_iters, warmup_iters=0, start_warmup=0.0, freeze_iters=0):
        if total_iters <= 0:
            raise ValueError("schedule needs total_iters > 0")
        if freeze_iters + warmup_iters > total_iters:
            raise ValueError(f"freeze ({freeze_iters}) + warm-up ({warmup_iters}) > total iterations ({total_iters})")
        self.base, self.final, self.total = float(base), float(final), int(total_iters)
        self.warmup, self.start_warmup, self.freeze = int(warmup_iters), float(start_warmup), int(freeze_iters)

    def __getitem__(self, it: int) -> float:
        if it >= self.total:
            return self.final
        if it < self.freeze:
            return 0.0
        it -= self.freeze
        if it < self.warmup:
            return self.start_warmup + (self.base - self.start_warmup) * it / self.warmup
        it -= self.warmup
        span = self.total - self.freeze - self.warmup
        return self.final + 0.5 * (self.base - self.final) * (1 + math.cos(math.pi * it / span))


def build_schedules(cfg, iters_per_epoch: int) -> dict:
    """The optimiser's schedules (``lr``, ``wd``, ``last_layer_lr``) and ``total``, the run's iterations; each
    method adds its own (:meth:`pretrain.methods.PretrainingMethod.schedules`)."""
    o = cfg.optim
    total = int(o.epochs * iters_per_epoch)
    warm = int(o.warmup_epochs * iters_per_epoch)
    lr = CosineSchedule(o.lr, o.min_lr, total, warm)
    return {
        "lr": lr,
        "wd": CosineSchedule(o.weight_decay, o.weight_decay_end, total),
        # DINOv2: the lr schedule with the first ``freeze_last_layer_epochs`` set to 0 for the heads' last layers
        "last_layer_lr": FrozenPrefix(lr, int(o.freeze_last_layer_epochs * iters_per_epoch)),
        "total": total,
    }


class FrozenPrefix:
    """``schedule`` with the first ``n`` iterations set to 0 (the last layer frozen for the first epoch)."""

    def __init__(self, schedule, n: int):
        self.schedule, self.n = schedule, n

    def __getitem__(self, it: int) -> float:
        return 0.0 if it < self.n else self.schedule[it]
