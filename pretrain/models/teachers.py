"""Frozen pretrained teachers for CR2PQ (docs/cr2pq.md): images -> a grid of patch embeddings ``z'``.

Two kinds (``cr2pq.teacher``):

- ``timm``: a timm CNN, ``timm.create_model(name, pretrained=False, num_classes=0, global_pool="")`` (the paper's
  best teacher is a DINO ResNet-50), its ``forward_features`` map ``(B, C, h, w)`` read as ``h * w`` tokens of
  width ``C``; with ``stage = k > 0`` the map of its ``k``-th feature stage instead (timm's
  ``forward_intermediates`` index: for a ResNet ``layer1`` - ``layer4``, strides 4-32). The weights come from a
  local file (a torchvision/timm-style state dict, e.g. DINO's ``dino_resnet50_pretrain.pth``; ``module.`` /
  ``backbone.`` prefixes and the ``fc`` classifier are dropped); no file (``cr2pq.teacher_init=random``) means
  timm's random initialisation, seeded, with each residual block's last BatchNorm scale left at 1
  (``zero_init_last=False``: timm's default zeroes it, which in eval mode turns every residual branch off);
- ``checkpoint``: any checkpoint the converter reads (ours, DINOv2, timm, MAE, iBOT, DINO), through
  :func:`transfer.analysis.backbones.load_adapter`; its final-normed patch tokens after the last block.

Either way the teacher is in eval mode with ``requires_grad=False`` and runs under ``no_grad``, and it gets the
images in its own normalisation (the crops arrive ImageNet-normalised). ``grid(size)`` is its output grid for a
``size x size`` input, found by running it once: CR2PQ's ``K_B`` follows the teacher (7 x 7 for a ResNet at 224,
14 x 14 for a ViT-B/16).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..data.normalization import IMAGENET_MEAN, IMAGENET_STD

TEACHER_KINDS = ("timm", "checkpoint")

__all__ = ["TEACHER_KINDS", "FrozenTeacher", "build_teacher", "load_cnn_weights", "teacher_from_config"]


def load_cnn_weights(model: nn.Module, path: str) -> None:
    """A torchvision/timm-style state dict from ``path`` into ``model`` (strict once the prefixes ``module.`` /
    ``backbone.`` and the ``fc.`` classifier are removed); nested under ``state_dict`` / ``model`` is fine."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        for prefix in ("module.", "backbone."):
            k = k[len(prefix) :] if k.startswith(prefix) else k
        if not k.startswith("fc."):
            state[k] = v
    model.load_state_dict(state, strict=True)


class FrozenTeacher(nn.Module):
    """``forward(images)`` -> ``(B, h*w, C)`` patch embeddings, row-major; ``images`` ImageNet-normalised."""

    def __init__(self, model: nn.Module, kind: str, mean=IMAGENET_MEAN, std=IMAGENET_STD, adapter=None, stage=0):
        super().__init__()
        self.model, self.kind, self._adapter, self.stage = model.eval(), kind, adapter, int(stage)
        for p in self.model.parameters():
            p.requires_grad_(False)
        shift = torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)
        self.register_buffer("in_scale", (torch.tensor(IMAGENET_STD) / torch.tensor(std)).view(1, 3, 1, 1), False)
        self.register_buffer("in_shift", (shift / torch.tensor(std)).view(1, 3, 1, 1), False)

    def train(self, mode: bool = True):
        """Always eval (BatchNorm statistics and dropout stay frozen)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.in_scale + self.in_shift  # ImageNet normalisation -> the teacher's
        if self.kind == "timm":
            return self.feature_map(x).flatten(2).transpose(1, 2)
        return self._adapter.tokens(x, "last")[0]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """A timm teacher's ``(B, C, h, w)`` output (``stage`` 0) or its ``stage``-th intermediate map."""
        if self.stage == 0:
            return self.model.forward_features(x)
        maps = self.model.forward_intermediates(x, indices=[self.stage], intermediates_only=True, stop_early=True)
        return maps[0]

    @torch.no_grad()
    def grid(self, size: int) -> tuple[tuple[int, int], int]:
        """``((h, w), C)``: the output grid and width for a ``size x size`` input (one forward pass)."""
        device = self.in_scale.device
        if self.kind == "timm":
            fmap = self.feature_map(torch.zeros(1, 3, size, size, device=device))
            return (int(fmap.shape[2]), int(fmap.shape[3])), int(fmap.shape[1])
        tokens = self.forward(torch.zeros(1, 3, size, size, device=device))
        return self._adapter.grid(size, size), int(tokens.shape[-1])


def teacher_from_config(c, image_size: int) -> FrozenTeacher:
    """The teacher of a config's ``cr2pq`` section: pretrained weights unless ``teacher_init`` is ``random``."""
    if c.teacher_init == "pretrained" and not c.teacher_weights:
        raise ValueError(
            "cr2pq.teacher_weights must name the teacher's weights file (or set cr2pq.teacher_init=random)"
        )
    weights = "" if c.teacher_init == "random" else str(c.teacher_weights)
    return build_teacher(c.teacher, c.teacher_name, weights, c.teacher_seed, image_size, c.teacher_stage)


def build_teacher(
    kind: str, name: str = "resnet50", weights: str = "", seed: int = 0, image_size: int = 224, stage: int = 0
) -> FrozenTeacher:
    """The frozen teacher of ``kind`` (module docstring): ``name`` the timm model (``timm``), ``weights`` its file
    (``timm``: empty = random, seeded by ``seed``; ``checkpoint``: required, its positions materialised at
    ``image_size``), ``stage`` the timm feature stage (0 = the final map)."""
    if kind == "timm":
        import timm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            kwargs = dict(pretrained=False, num_classes=0, global_pool="")
            try:  # ResNets: keep the residual branches of a random teacher alive (module docstring)
                model = timm.create_model(name, **kwargs, **({} if weights else {"zero_init_last": False}))
            except TypeError:  # a model without the option
                model = timm.create_model(name, **kwargs)
        if weights:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"cr2pq.teacher_weights: no file {weights!r}")
            load_cnn_weights(model, weights)
        return FrozenTeacher(model, kind, stage=stage)
    if kind == "checkpoint":
        if stage:
            raise ValueError("cr2pq.teacher_stage applies to teacher=timm only")
        if not weights:
            raise ValueError("cr2pq.teacher=checkpoint needs cr2pq.teacher_weights (a checkpoint the converter reads)")
        from transfer.analysis.backbones import load_adapter  # the converter's readers (docs/cr2pq.md, "Teacher")

        adapter = load_adapter(weights, image_size=image_size)
        return FrozenTeacher(adapter.model, kind, adapter.mean, adapter.std, adapter=adapter)
    raise ValueError(f"teacher must be one of {TEACHER_KINDS}, got {kind!r}")
