"""DINO image-level (CLS) loss, DINOv2's pairing and weighting (SPEC §2.4).

Each global crop's student output is matched with the teacher output of every *other* global crop; each local
crop's student output with the teacher outputs of all global crops. The loss is the mean over these pair terms
of the batch-mean cross-entropy.
"""
from __future__ import annotations

import torch

from .targets import upcast


class _SoftCrossEntropy(torch.autograd.Function):
    """``-sum_k t_k log softmax(z)_k = (sum_k t_k) logsumexp(z) - t . z`` with ``z = s / temp``, in fp32.

    Autograd's composition (divide, log_softmax, multiply, sum and their backwards) makes about ten passes over
    ``(rows, K)`` tensors, with as many temporaries; here the forward keeps only ``logsumexp`` and the backward
    forms ``(softmax(z) sum_k t_k - t) / temp`` in place in one buffer. The teacher side gets no gradient."""

    @staticmethod
    def forward(ctx, teacher_probs, student_logits, inv_temp):
        with torch.autocast(student_logits.device.type, enabled=False):
            t = upcast(teacher_probs)
            z = upcast(student_logits) * inv_temp
            lse = torch.logsumexp(z, dim=-1)
            t_sum = t.sum(dim=-1)
            dot = torch.einsum("...k,...k->...", t, z.to(t.dtype))
        ctx.save_for_backward(t, student_logits, lse, t_sum)
        ctx.inv_temp = inv_temp
        return t_sum * lse.to(t.dtype) - dot

    @staticmethod
    def backward(ctx, grad):
        t, s, lse, t_sum = ctx.saved_tensors
        with torch.autocast(s.device.type, enabled=False):
            g = upcast(s) * ctx.inv_temp  # a fresh buffer (s is never modified)
            g.sub_(lse.unsqueeze(-1)).exp_()  # softmax(z)
            g.mul_(t_sum.unsqueeze(-1).to(g.dtype)).sub_(t.to(g.dtype))
            g.mul_((grad * ctx.inv_temp).unsqueeze(-1).to(g.dtype))
        return None, g.to(s.dtype), None


def soft_cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-row ``-sum_k t_k log softmax(s / temp)_k`` (fp32 or wider), differentiable in the student logits only."""
    if teacher_probs.shape != student_logits.shape:
        raise ValueError(f"teacher {tuple(teacher_probs.shape)} and student {tuple(student_logits.shape)} differ")
    return _SoftCrossEntropy.apply(teacher_probs.detach(), student_logits, 1.0 / float(student_temp))


def dino_cls_loss(
    student_global: torch.Tensor,
    student_local: torch.Tensor | None,
    teacher_global: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Args: ``student_global`` ``(n_g, B, K)`` logits, ``student_local`` ``(n_l, B, K)`` logits or None,
    ``teacher_global`` ``(n_g, B, K)`` probabilities. Returns the scalar loss."""
    n_g = student_global.shape[0]
    total, n_terms = student_global.new_zeros(()), 0
    for i in range(n_g):
        for j in range(n_g):
            if i != j:
                total = total + soft_cross_entropy(teacher_global[j], student_global[i], student_temp).mean()
                n_terms += 1
    if student_local is not None and len(student_local):
        # CE is linear in the target, so each local crop's terms against all global teachers are one call with
        # the summed targets (one logsumexp per local crop instead of one per pair); each pair still counts once.
        teacher_sum = teacher_global.sum(dim=0)
        for s in student_local:
            total = total + soft_cross_entropy(teacher_sum, s, student_temp).mean()
            n_terms += teacher_global.shape[0]
    if n_terms == 0:
        raise ValueError("the DINO loss needs at least two global crops or one local crop")
    return total / n_terms
