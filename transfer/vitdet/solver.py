"""Optimiser and schedule pieces of the ViTDet recipe: layer-wise lr decay and the step schedule with warm-up."""

from __future__ import annotations

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

__all__ = ["vit_lr_decay_rate", "make_vit_lr_factor_func", "vitdet_lr_multiplier"]


def vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """Layer-wise lr decay factor: detectron2's ``get_vit_lr_decay_rate`` with our extra tokens at layer 0.

    detectron2 puts ``pos_embed`` and ``patch_embed`` at layer 0 (factor ``rate**(num_layers+1)``) and block
    ``i`` at layer ``i+1`` (factor ``rate**(num_layers-i)``); everything else (pyramid, heads) gets 1. The
    ``cls_token`` / ``reg_token`` of :class:`~transfer.vitdet.backbone.SDPAViT` belong with the embeddings.
    """
    if name.startswith("backbone") and (".cls_token" in name or ".reg_token" in name):
        return lr_decay_rate ** (num_layers + 1)
    return get_vit_lr_decay_rate(name, lr_decay_rate=lr_decay_rate, num_layers=num_layers)


class _LrFactor:
    """Picklable ``parameter name -> lr factor`` callable (configs are saved and sent to worker processes)."""

    def __init__(self, lr_decay_rate: float, num_layers: int):
        self.lr_decay_rate = float(lr_decay_rate)
        self.num_layers = int(num_layers)

    def __call__(self, name: str) -> float:
        return vit_lr_decay_rate(name, lr_decay_rate=self.lr_decay_rate, num_layers=self.num_layers)

    def __repr__(self) -> str:
        return f"vit_lr_decay_rate(lr_decay_rate={self.lr_decay_rate}, num_layers={self.num_layers})"


def make_vit_lr_factor_func(lr_decay_rate: float = 0.7, num_layers: int = 12) -> _LrFactor:
    """The ``lr_factor_func`` for ``get_default_optimizer_params`` (``LazyCall`` it in configs)."""
    if not 0.0 < float(lr_decay_rate) <= 1.0:
        raise ValueError(f"lr_decay_rate must be in (0, 1], got {lr_decay_rate}")
    return _LrFactor(lr_decay_rate, num_layers)


def vitdet_lr_multiplier(
    max_iter: int,
    milestones: list[int] | None = None,
    milestone_fractions: list[float] | None = None,
    values: list[float] | None = None,
    warmup_iters: int = 250,
    warmup_factor: float = 0.001,
) -> WarmupParamScheduler:
    """ViTDet's lr multiplier: linear warm-up from ``warmup_factor`` over ``warmup_iters``, then steps x0.1.

    Give the step iterations either as ``milestones`` (absolute, e.g. ``[19667, 21306]`` of 22,128) or as
    ``milestone_fractions`` of ``max_iter`` (toy configs, so that ``train.max_iter=...`` overrides keep the shape;
    steps that coincide in a very short run are merged).
    ``warmup_iters`` longer than ``max_iter`` is clamped to ``max_iter``.
    """
    max_iter = int(max_iter)
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    if (milestones is None) == (milestone_fractions is None):
        raise ValueError("give exactly one of milestones (iterations) or milestone_fractions (of max_iter)")
    if milestones is None:
        # floor, inside [1, max_iter - 1], duplicates dropped: very short runs keep a valid (coarser) schedule
        steps = [min(max(1, int(f * max_iter)), max_iter - 1) for f in milestone_fractions]
        milestones = sorted(set(steps)) if max_iter > 1 else []
        if values is not None:
            values = list(values)[: len(milestones) + 1]
    milestones = [int(m) for m in milestones]
    if any(b <= a for a, b in zip(milestones, milestones[1:])) or not all(0 < m < max_iter for m in milestones):
        raise ValueError(f"milestones must increase strictly and lie in (0, max_iter={max_iter}), got {milestones}")
    if values is None:
        values = [0.1**i for i in range(len(milestones) + 1)]
    if len(values) != len(milestones) + 1:
        raise ValueError(f"need len(milestones) + 1 values, got {len(values)} for {len(milestones)} milestones")
    return WarmupParamScheduler(
        MultiStepParamScheduler(values=list(values), milestones=milestones, num_updates=max_iter),
        warmup_factor=warmup_factor,
        warmup_length=min(1.0, max(0, int(warmup_iters)) / max_iter),
    )
