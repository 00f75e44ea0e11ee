"""The method of docs/method.md: student/teacher self-distillation, a collated batch -> the loss terms of Eq. 6.

``L = w_dino L_image + w_ibot L_content + w_koleo L_KoLeo + w_pos L_pos`` (docs/method.md §4):
- ``L_image``: DINO CLS loss (:func:`dino_cls_loss`) between student crops and the teacher's global crops;
- ``L_content``: iBOT loss over content-masked patches (student sees ``[MASK]`` content, teacher the clean crop);
- ``L_pos``: the same form over position-masked patches (student sees ``[POSMASK]`` positions) with its own head;
- ``L_KoLeo``: on the student's final-normed global CLS tokens, per global crop.

The teacher is an EMA copy of the student (backbone and heads), always in eval mode. What the method needs from
the data: DINOv2's multi-crop with each crop's box and flip, mapped into the virtual image by the position/scale
augmentation, and per-crop content or position masks drawn at collate time. DINOv2-dagger is this method with
``pos_field.enabled=false`` and ``masking.content_fraction=1`` (configs/pretrain/vit*_dinov2.yaml).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data.collate import MaskingCollator
from ..data.dataset import SSLDataset
from ..data.folder import ImageFolderDataset
from ..data.multicrop import MultiCropAugmentation
from ..data.position_aug import PositionScaleAugmentation
from ..engine.health import UniformOutputMonitor
from ..engine.schedules import CosineSchedule
from ..losses import TeacherTargets, dino_cls_loss, koleo_loss, masked_patch_loss
from ..models import DINOHead, VisionTransformer, build_vit
from ..models.from_config import backbone_config
from .base import PretrainingMethod, zero_from


def uses_content_masking(cfg) -> bool:
    return cfg.masking.mask_probability * cfg.masking.content_fraction > 0


def uses_position_masking(cfg) -> bool:
    return cfg.masking.mask_probability * (1.0 - cfg.masking.content_fraction) > 0


def _keep_in_graph(head: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """A zero that ties ``head``'s parameters to the loss when it saw no token this step (DDP expects every
    parameter to receive a gradient); nothing otherwise."""
    if logits.shape[0] > 0:
        return logits.new_zeros(())
    return zero_from(head.parameters())


class _UniformHeadWatch:
    """The DINO term of :class:`UniformOutputMonitor` as a method health monitor."""

    event = "uniform_dino_outputs"

    def __init__(self, n_prototypes: int, start_iteration: int):
        self.monitor = UniformOutputMonitor(n_prototypes, start_iteration)

    def update(self, iteration: int, terms: dict) -> str | None:
        return self.monitor.update(iteration, terms["dino"])


class IntertwinedDistillation(PretrainingMethod):
    """Holds ``student`` and ``teacher`` (``nn.ModuleDict`` of backbone and heads) and computes the losses."""

    name = "intertwined"
    loss_terms = ("dino", "ibot", "pos", "koleo")

    @classmethod
    def build_dataset(cls, cfg, images: ImageFolderDataset) -> SSLDataset:
        c, pf = cfg.crops, cfg.pos_field
        multicrop = MultiCropAugmentation(
            global_size=c.global_size,
            local_size=c.local_size,
            n_global=c.n_global,
            n_local=c.n_local,
            global_scale=tuple(c.global_scale),
            local_scale=tuple(c.local_scale),
            photometric=c.photometric,
            blur_prob=tuple(c.blur_prob),
            grayscale_prob=c.grayscale_prob,
            photometric_on=c.photometric_on,
            reduced_decode=c.reduced_decode,
            resize_backend=c.get("resize_backend", "pil"),
        )
        mode = pf.scale_dist if pf.enabled else "none"
        position_aug = PositionScaleAugmentation(mode, pf.s_min, pf.s_max, tuple(pf.beta), pf.enclose)
        return SSLDataset(images, multicrop, position_aug, seed=cfg.train.seed)

    @classmethod
    def build_collator(cls, cfg) -> MaskingCollator:
        g = cfg.crops.global_size // cfg.model.patch_size
        m = cfg.masking
        return MaskingCollator(
            (g, g), tuple(m.ratio), m.mask_probability, m.content_fraction, m.content_shape, m.pos_shape
        )

    @classmethod
    def schedules(cls, cfg, iters_per_epoch: int, total: int) -> dict:
        t = cfg.teacher
        warm = int(t.warmup_temp_epochs * iters_per_epoch)
        return {
            "momentum": CosineSchedule(t.momentum, t.final_momentum, total),
            "teacher_temp": CosineSchedule(t.temp, t.temp, total, warm, start_warmup=t.warmup_temp),
        }

    @classmethod
    def effective_epochs(cls, cfg) -> float:
        """iBOT's effective epochs: epochs x (n_global + n_local x (local/global)^2)."""
        c = cfg.crops
        return cfg.optim.epochs * (c.n_global + c.n_local * (c.local_size / c.global_size) ** 2)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        h, lc = cfg.heads, cfg.loss
        backbone = build_vit(backbone_config(cfg))
        d = backbone.embed_dim

        def head() -> DINOHead:
            return DINOHead(
                d,
                h.n_prototypes,
                h.hidden_dim,
                h.bottleneck_dim,
                h.nlayers,
                last_layer_init=h.last_layer_init,
                gain=h.last_layer_gain,
            )

        student = {"backbone": backbone, "dino_head": head()}
        self.use_content = uses_content_masking(cfg)
        self.use_pos = uses_position_masking(cfg)
        if self.use_content and h.ibot_separate:
            student["ibot_head"] = head()
        if self.use_pos:
            student["pos_head"] = head()
        self.student = nn.ModuleDict(student)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        k = h.n_prototypes
        self.dino_targets = TeacherTargets(lc.targets, k, lc.sk_iterations, lc.center_momentum)
        self.ibot_targets = TeacherTargets(lc.targets, k, lc.sk_iterations, lc.center_momentum)
        self.pos_targets = TeacherTargets(lc.targets, k, lc.sk_iterations, lc.center_momentum)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never uses drop path
        return self

    def _ibot_head(self, part: nn.ModuleDict) -> nn.Module:
        return part["ibot_head"] if "ibot_head" in part else part["dino_head"]

    @torch.no_grad()
    def teacher_targets(self, batch: dict, teacher_temp: float) -> dict:
        n_g = batch["n_global"]
        out = self.teacher["backbone"](batch["global_crops"], batch["global_boxes"], batch["global_flips"])
        cls = self.teacher["dino_head"](out["cls"])
        cls_t = self.dino_targets(cls, teacher_temp)
        targets = {"cls": cls_t.reshape(n_g, -1, cls_t.shape[-1])}
        if self.use_content:
            patches = out["patch"][batch["content_masks"]]
            targets["ibot"] = self.ibot_targets(self._ibot_head(self.teacher)(patches), teacher_temp)
        if self.use_pos:
            patches = out["patch"][batch["pos_masks"]]
            targets["pos"] = self.pos_targets(self.teacher["pos_head"](patches), teacher_temp)
        return targets

    def trainable_modules(self) -> nn.ModuleDict:
        return self.student

    def backbone_to_export(self) -> VisionTransformer:
        return self.teacher["backbone"]

    def health_monitor(self, schedules: dict) -> _UniformHeadWatch:
        return _UniformHeadWatch(self.cfg.heads.n_prototypes, schedules["lr"].warmup)

    def after_step(self, values: dict) -> None:
        self.update_teacher(values["momentum"])

    def forward(self, batch: dict, values: dict) -> dict:
        """Returns ``{"loss": weighted total, "dino", "ibot", "pos", "koleo": unweighted terms}``; ``values`` gives
        this iteration's ``teacher_temp``."""
        cfg = self.cfg.loss
        n_g, n_l = batch["n_global"], batch["n_local"]
        targets = self.teacher_targets(batch, values["teacher_temp"])

        s = self.student
        content = batch["content_masks"] if self.use_content else None
        pos = batch["pos_masks"] if self.use_pos else None
        g = s["backbone"](batch["global_crops"], batch["global_boxes"], batch["global_flips"], content, pos)
        cls_tokens = [g["cls"]]
        if n_l > 0:
            loc = s["backbone"](batch["local_crops"], batch["local_boxes"], batch["local_flips"])
            cls_tokens.append(loc["cls"])
        cls_logits = s["dino_head"](torch.cat(cls_tokens))
        k = cls_logits.shape[-1]
        n_gb = g["cls"].shape[0]
        s_global = cls_logits[:n_gb].reshape(n_g, -1, k)
        s_local = cls_logits[n_gb:].reshape(n_l, -1, k) if n_l > 0 else None
        temp = cfg.student_temp

        terms = {"dino": dino_cls_loss(s_global, s_local, targets["cls"], temp)}
        zero = g["patch"].new_zeros(())
        terms["ibot"] = zero
        if self.use_content:
            head = self._ibot_head(s)
            logits = head(g["patch"][content])
            terms["ibot"] = masked_patch_loss(logits, targets["ibot"], content, temp) + _keep_in_graph(head, logits)
        terms["pos"] = zero
        if self.use_pos:
            logits = s["pos_head"](g["patch"][pos])
            terms["pos"] = masked_patch_loss(logits, targets["pos"], pos, temp) + _keep_in_graph(s["pos_head"], logits)
        terms["koleo"] = zero
        if cfg.koleo_weight > 0:
            terms["koleo"] = sum(koleo_loss(c, scope=cfg.koleo_scope) for c in g["cls"].chunk(n_g))
        total = (
            cfg.dino_weight * terms["dino"]
            + cfg.ibot_weight * terms["ibot"]
            + cfg.pos_weight * terms["pos"]
            + cfg.koleo_weight * terms["koleo"]
        )
        idle = self.idle_backbone_parameters()
        terms["loss"] = total + zero_from(idle) if idle else total
        return terms

    def idle_backbone_parameters(self) -> list[nn.Parameter]:
        """Backbone tokens the configured masking never uses: ``[MASK]`` without content masking, ``[POSMASK]``
        without position masking. They are kept (every checkpoint has the same keys) and tied into the loss with
        weight 0, since DDP fails on parameters that never receive a gradient."""
        b = self.student["backbone"]
        return ([] if self.use_content else [b.mask_token]) + ([] if self.use_pos else [b.posmask_token])

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher = m * teacher + (1 - m) * student`` for every parameter."""
        t_params = list(self.teacher.parameters())
        s_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
