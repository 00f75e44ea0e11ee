"""AdamW with parameter groups, and gradient clipping (docs/fidelity.md, points on weight decay and clipping).

Weight decay: by default DINOv2's rule, which exempts only biases, norms and LayerScale (``.bias``, ``norm``,
``gamma`` in the name), so tokens, ``pos_embed`` and the position field are decayed. With
``decay_tokens_and_positions=False`` every parameter of at most one dimension and every token, position embedding
and the field are exempt as well (our former rule). The heads' last layers (``last_layer`` in the name) are flagged
so that their lr can be held at 0 for the first epoch.

Clipping: DINOv2 clips each student module (backbone, each head) to the threshold on its own; ``joint`` clips one
norm over all of them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

NO_DECAY_NAMES = ("cls_token", "reg_token", "mask_token", "posmask_token", "cls_pos_embed", "pos_embed", "pos_field")


def exempt_from_weight_decay(name: str, p: torch.Tensor, decay_tokens_and_positions: bool = True) -> bool:
    """Whether parameter ``name`` gets no weight decay."""
    if name.endswith(".bias") or "norm" in name or "gamma" in name:  # DINOv2's rule
        return True
    if decay_tokens_and_positions:
        return False
    return p.ndim <= 1 or any(t in name for t in NO_DECAY_NAMES)


def param_groups(model: nn.Module, decay_tokens_and_positions: bool = True) -> list[dict]:
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = exempt_from_weight_decay(name, p, decay_tokens_and_positions)
        last = "last_layer" in name
        key = (no_wd, last)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "wd_mult": 0.0 if no_wd else 1.0, "is_last_layer": last}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.optim.decay_tokens_and_positions)
    for g in groups:
        g.pop("names")
    # fused: one kernel per parameter group instead of a loop over tensors (CPU and CUDA in torch >= 2.4)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=0.0, fused=True)


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = last_layer_lr if g["is_last_layer"] else lr
        g["weight_decay"] = wd * g["wd_mult"]


def clip_gradients(modules: Mapping[str, nn.Module], max_norm: float, per_module: bool = True) -> dict[str, float]:
    """Clip the gradients of ``modules`` to ``max_norm`` (``<= 0``: no clipping), each module on its own
    (``per_module``, DINOv2) or under one joint norm. Returns every module's gradient norm before clipping and
    ``"total"``, the norm over all of them."""
    limit = float(max_norm) if max_norm > 0 else float("inf")
    grads = {k: [p for p in m.parameters() if p.grad is not None] for k, m in modules.items()}
    if per_module:
        norms = {k: torch.nn.utils.clip_grad_norm_(ps, limit) if ps else torch.zeros(()) for k, ps in grads.items()}
        out = {k: float(v) for k, v in norms.items()}
        out["total"] = float(torch.linalg.vector_norm(torch.tensor(list(out.values()), dtype=torch.float64)))
        return out
    out = {k: float(torch.nn.utils.get_total_norm([p.grad for p in ps])) if ps else 0.0 for k, ps in grads.items()}
    out["total"] = float(torch.nn.utils.clip_grad_norm_([p for ps in grads.values() for p in ps], limit))
    return out
