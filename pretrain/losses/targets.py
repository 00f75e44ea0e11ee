"""Teacher targets: Sinkhorn-Knopp (default) and softmax-centering (docs/method.md §4).

Both take raw teacher head outputs (logits) of shape ``(B, K)`` and return probabilities ``(B, K)``.
When the batch spans processes, the normalisations are all-reduced so every process sees the global batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..distributed import all_reduce_max, all_reduce_sum
from .precision import upcast


def _max_over_batch(x: torch.Tensor) -> torch.Tensor:
    """Per-row maximum over the batch axis (dim 1, split across processes); 0 for rows with no finite entry."""
    m = all_reduce_max(x.amax(dim=1, keepdim=True) if x.shape[1] else x.new_full((x.shape[0], 1), -torch.inf))
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _logsumexp_over_batch(x: torch.Tensor) -> torch.Tensor:
    """``log sum_b exp(x[:, b])`` per row, where the batch axis (dim 1) is split across processes."""
    m = _max_over_batch(x)
    s = all_reduce_sum(torch.exp(x - m).sum(dim=1, keepdim=True))
    return m + torch.log(s)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp targets: rows (samples) sum to 1; prototypes get equal mass ``B/K`` (up to convergence).

    DINOv2's iterations (normalise the total mass, then alternately prototypes and samples), made numerically
    safe: DINOv2's ``exp(logits / temp)`` overflows once logit/temperature passes ~88 and returns NaN.
    The fast path works in the exp domain after subtracting each prototype's maximum over the (global) batch;
    the next step normalises each prototype's row anyway, so the shift changes nothing, every entry is <= 1
    and every prototype's row sum is >= 1. Only a *sample* whose scores underflow for every prototype can
    still give 0/0; then (checked on all processes together) the whole computation is redone in the log
    domain (:func:`sinkhorn_knopp_log`). The batch may span processes (global normalisation by all-reduce).
    """
    lq = upcast(logits).t()  # (K, B)
    q = (lq - _max_over_batch(lq)).div_(temp).exp_()
    # the global-mass normalisation and the 1/K, 1/B factors are absorbed by the next normalisation each
    # time, so only the final one (samples sum to 1) is applied
    bad = torch.zeros((), device=q.device)
    for _ in range(n_iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        col = q.sum(dim=0, keepdim=True)
        bad = torch.maximum(bad, (~(col > 0)).any().to(bad.dtype))
        q /= col
    if all_reduce_max(bad).item() > 0:
        return sinkhorn_knopp_log(logits, temp, n_iterations)
    return q.t()


@torch.no_grad()
def sinkhorn_knopp_log(logits: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """:func:`sinkhorn_knopp` in the log domain: safe for any finite logits, about 3x the memory traffic."""
    lq = (upcast(logits) / temp).t()  # (K, B)
    k = lq.shape[0]
    b = all_reduce_sum(torch.tensor(float(lq.shape[1]), device=lq.device, dtype=lq.dtype))
    total = _logsumexp_over_batch(torch.logsumexp(lq, dim=0, keepdim=True))  # (1, 1): log of the global mass
    lq = lq - total
    log_k, log_b = math.log(k), torch.log(b)
    for _ in range(n_iterations):
        lq = lq - _logsumexp_over_batch(lq) - log_k  # each prototype gets mass 1/K
        lq = lq - torch.logsumexp(lq, dim=0, keepdim=True) - log_b  # each sample gets mass 1/B
    return (torch.exp(lq) * b).t()


class SoftmaxCentering(nn.Module):
    """DINO's softmax-centering: ``softmax((t - c) / temp)``, ``c`` an EMA of the (global) batch mean."""

    def __init__(self, out_dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, temp: float) -> torch.Tensor:
        probs = torch.softmax((upcast(logits) - self.center) / temp, dim=-1)
        self.update(logits)
        return probs

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        s = all_reduce_sum(logits.float().sum(dim=0, keepdim=True))
        n = all_reduce_sum(torch.tensor(float(logits.shape[0]), device=logits.device))
        if n.item() > 0:
            self.center.mul_(self.momentum).add_(s / n, alpha=1 - self.momentum)


class TeacherTargets(nn.Module):
    """Chooses the target rule by name: ``sinkhorn_knopp`` or ``centering``."""

    def __init__(self, mode: str, out_dim: int, sk_iterations: int = 3, center_momentum: float = 0.9):
        super().__init__()
        if mode not in ("sinkhorn_knopp", "centering"):
            raise ValueError(f"teacher targets must be 'sinkhorn_knopp' or 'centering', got {mode!r}")
        self.mode, self.sk_iterations = mode, sk_iterations
        self.centering = SoftmaxCentering(out_dim, center_momentum) if mode == "centering" else None

    def forward(self, logits: torch.Tensor, temp: float) -> torch.Tensor:
        if self.mode == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp, self.sk_iterations)
        return self.centering(logits, temp)
