"""The contract between a pretraining method and the engine (docs/architecture.md, "Adding a method").

A method is one module of :mod:`pretrain.methods` holding a :class:`PretrainingMethod` subclass. The class says
what the method needs from the data (its dataset over the image source, its collate function) and computes its
loss terms from a collated batch. The engine builds the data, the optimiser over :meth:`trainable_modules`, the
schedules, logging, checkpointing and export, and knows nothing else about the method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.folder import ImageFolderDataset
from ..models.vit import VisionTransformer


def zero_from(params) -> torch.Tensor:
    """``0 * (one entry of each parameter)``: ties parameters the objective does not use at this step into the
    graph, so that DDP sees a gradient (of zero) for every parameter every step."""
    return 0.0 * sum(p.view(-1)[0] for p in params)


class PretrainingMethod(nn.Module):
    """One pretraining objective. Subclasses set ``name`` and ``loss_terms`` and implement the methods below."""

    name: ClassVar[str]
    loss_terms: ClassVar[tuple[str, ...]]  # the unweighted terms forward() returns besides "loss", for the log

    # ------------------------------------------------------------------ what the method needs from the data
    @classmethod
    def build_dataset(cls, cfg, images: ImageFolderDataset) -> Dataset:
        """The per-image samples (crops, boxes, ...) over ``images``. The dataset has ``set_epoch(p)``, called
        before each sample with the pass over the data it belongs to, and a sample is a pure function of the
        seed, the pass and the index (so that a resumed run sees the samples of an uninterrupted one)."""
        raise NotImplementedError

    @classmethod
    def build_collator(cls, cfg) -> Callable[[list[dict]], dict]:
        """Samples -> one batch (masks included)."""
        raise NotImplementedError

    @classmethod
    def schedules(cls, cfg, iters_per_epoch: int, total: int) -> dict:
        """Per-iteration values of the method's own (``name -> schedule[it]``), besides lr and weight decay."""
        return {}

    @classmethod
    def effective_epochs(cls, cfg) -> float:
        """Epochs in units of full-resolution image views, for the start-up log (multi-crop counts crops)."""
        return float(cfg.optim.epochs)

    # ------------------------------------------------------------------ the objective
    def trainable_modules(self) -> nn.ModuleDict:
        """The modules the optimiser updates, by name; gradients are clipped per module (``optim.clip_grad_scope``)."""
        raise NotImplementedError

    def forward(self, batch: dict, values: dict) -> dict[str, torch.Tensor]:
        """``{"loss": the weighted total, <each of loss_terms>: unweighted}`` for one batch; ``values`` holds this
        iteration's schedule values."""
        raise NotImplementedError

    def after_step(self, values: dict) -> None:
        """Called after every optimiser step (e.g. the EMA teacher update)."""

    def backbone_to_export(self) -> VisionTransformer:
        """The backbone written to ``backbone.pth`` at the end of training."""
        raise NotImplementedError

    def export_extras(self, output_dir: str) -> list[str]:
        """Called once after ``backbone.pth`` is written (main process): write method-specific files (e.g. a
        position head) into ``output_dir``; returns their paths. Nothing by default."""
        return []

    def health_monitor(self, schedules: dict):
        """An object whose ``update(iteration, terms) -> str | None`` returns a warning once a run is going nowhere,
        with an ``event`` name for the metrics file; None when the method has no such check."""
        return None
