"""MAXA's scores: binary IoU, MSE, and instance discrimination as the adjusted Rand index of k-means clusters."""

from __future__ import annotations

import torch


def binary_iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    pred, gt = pred.bool(), gt.bool()
    union = (pred | gt).sum().item()
    return 1.0 if union == 0 else (pred & gt).sum().item() / union


def _comb2(n: torch.Tensor) -> torch.Tensor:
    return n * (n - 1) / 2


def adjusted_rand_index(a: torch.Tensor, b: torch.Tensor) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings of the same items (any integer labels): 1 for the
    same partition (labels permuted or not), about 0 for independent ones. 1.0 when both put everything in one
    cluster (or there are fewer than two items)."""
    a, b = a.reshape(-1).long(), b.reshape(-1).long()
    if a.numel() != b.numel():
        raise ValueError("labelings of different sizes")
    _, ai = torch.unique(a, return_inverse=True)
    _, bi = torch.unique(b, return_inverse=True)
    table = torch.zeros(int(ai.max()) + 1, int(bi.max()) + 1, dtype=torch.float64)
    table.index_put_((ai, bi), torch.ones_like(ai, dtype=torch.float64), accumulate=True)
    index = _comb2(table).sum()
    rows, cols = _comb2(table.sum(1)).sum(), _comb2(table.sum(0)).sum()
    total = _comb2(torch.tensor(float(a.numel()), dtype=torch.float64))
    expected = rows * cols / total if total > 0 else torch.tensor(0.0)
    best = (rows + cols) / 2
    if best == expected:
        return 1.0
    return float((index - expected) / (best - expected))


def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on rows of ``x`` ``(N, D)`` with k-means++ seeding (generator ``seed``); cluster ids ``(N,)``."""
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    k = max(1, min(k, x.shape[0]))
    centres = [x[torch.randint(x.shape[0], (1,), generator=g)].squeeze(0)]
    for _ in range(k - 1):
        d2 = torch.cdist(x, torch.stack(centres)).min(dim=1).values ** 2
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        centres.append(x[torch.multinomial(p, 1, generator=g)].squeeze(0))
    c = torch.stack(centres)
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(x, c).argmin(dim=1)
        if _ > 0 and torch.equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(dim=0)
    return assign


def instance_ari(latent: torch.Tensor, instances: torch.Tensor, seed: int = 0) -> float | None:
    """The MAXA paper's instance discrimination score for one image: k-means (k = the number of ground-truth
    instances) on the latent features ``(C, H, W)`` of the foreground pixels (``instances > 0``), ARI against the
    instance ids. ``None`` for an image without instances."""
    fg = instances > 0
    ids = instances[fg]
    k = int(torch.unique(ids).numel())
    if k == 0:
        return None
    feats = latent.permute(1, 2, 0)[fg]
    return adjusted_rand_index(kmeans(feats, k, seed=seed), ids)
