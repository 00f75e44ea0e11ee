"""AdamW with parameter groups: no weight decay on biases, norms, tokens and the position field; the heads'
last layers flagged so that their lr can be held at 0 for the first epoch (SPEC §2.5)."""
from __future__ import annotations

import torch
from torch import nn

NO_DECAY_NAMES = ("cls_token", "reg_token", "mask_token", "posmask_token", "cls_pos_embed", "pos_embed", "pos_field")


def param_groups(model: nn.Module) -> list[dict]:
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim <= 1 or name.endswith(".bias") or "norm" in name or any(t in name for t in NO_DECAY_NAMES)
        last = "last_layer" in name
        key = (no_wd, last)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "wd_mult": 0.0 if no_wd else 1.0, "is_last_layer": last}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    groups = param_groups(model)
    for g in groups:
        g.pop("names")
    # fused: one kernel per parameter group instead of a loop over tensors (CPU and CUDA in torch >= 2.4)
    return torch.optim.AdamW(
        groups, lr=float(cfg.optim.lr), betas=tuple(cfg.optim.betas), weight_decay=0.0, fused=True
    )


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = last_layer_lr if g["is_last_layer"] else lr
        g["weight_decay"] = wd * g["wd_mult"]
