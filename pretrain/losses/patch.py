"""Masked-patch self-distillation loss, shared by content (iBOT) and position prediction (docs/method.md §4).

For masked patch ``i`` of crop ``c`` with ``m_c`` masked patches, the term is ``CE(t_i, s_i) / m_c``; the terms
are summed and divided by the number of global crops in the (local) batch, as DINOv2/iBOT do.
"""

from __future__ import annotations

import torch

from .dino import soft_cross_entropy


def masked_patch_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Args: ``student_logits`` and ``teacher_probs`` ``(M, K)`` for the masked patches in ``masks[masks]``
    order (row-major over crops then patches); ``masks`` ``(C, N)`` bool, C = global crops in the batch."""
    n_crops = masks.shape[0]
    if student_logits.shape[0] == 0:
        return student_logits.new_zeros(())
    per_crop = masks.sum(dim=1, keepdim=True).clamp(min=1).float()  # (C, 1)
    weights = (1.0 / per_crop).expand_as(masks)[masks]  # (M,)
    ce = soft_cross_entropy(teacher_probs, student_logits, student_temp)
    return (ce * weights).sum() / n_crops
