"""CR2PQ's losses (docs/cr2pq.md; CR2PQ Eqs. 9-10): a patch loss and a global loss, both ``||.||_p^p``.

- patch: ``L_patch = 1/(K_B^H K_B^W) sum_(h,w) ||z_B(h,w) - z'_B(h,w)||_p^p``, the prediction ``z_B`` of the teacher's
  patch embedding ``z'_B`` at each of view B's patches, averaged over the patches and over the batch;
- global: ``L_global = ||g'(mean of the pooled tokens) - mean_(h,w) z'_B(h,w)||_p^p``, averaged over the batch;
- total: ``L = L_patch + lambda L_global`` (lambda 0.5 by default).

``||x||_p^p = sum_c |x_c|^p`` over the channels (the squared Euclidean distance at ``p = 2``). Computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TARGET_NORMS = ("none", "layernorm")

__all__ = ["TARGET_NORMS", "global_loss", "normalize_targets", "p_distance", "patch_loss"]


def p_distance(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """``sum_c |x_c - y_c|^p`` over the last axis (float32)."""
    return (x.float() - y.float()).abs().pow(p).sum(-1)


def patch_loss(pred: torch.Tensor, target: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Eq. 9: ``pred``, ``target`` ``(B, N_B, D)``; the mean over patches and images of ``||pred - target||_p^p``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return p_distance(pred, target, p).mean()


def global_loss(pred: torch.Tensor, target_tokens: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Eq. 10: ``pred`` ``(B, D)`` (the projected pooled tokens), ``target_tokens`` ``(B, N_B, D)`` (the teacher's
    patch embeddings, averaged here); the mean over images of ``||pred - mean target||_p^p``."""
    return p_distance(pred, target_tokens.float().mean(1), p).mean()


def normalize_targets(tokens: torch.Tensor, norm: str) -> torch.Tensor:
    """The teacher's tokens as the losses see them: ``none`` (as they are, the paper) or ``layernorm`` (each token
    standardised over its channels, no affine, eps 1e-6)."""
    if norm == "none":
        return tokens.float()
    if norm == "layernorm":
        return F.layer_norm(tokens.float(), tokens.shape[-1:], eps=1e-6)
    raise ValueError(f"target norm must be one of {TARGET_NORMS}, got {norm!r}")
