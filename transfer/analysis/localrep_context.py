"""The LocalRep paper's global-context probe: how much of an image's global content one patch token carries.

The paper regresses, with L2-regularised linear regression, the fraction of the image's pixels that belong to each
of the three most common classes from the embedding of the image's central patch, and reports R^2 per class and
their mean. Here (docs/evaluation.md): the central patch is patch ``(h // 2, w // 2)`` of the grid; the classes
are the three with the most pixels over the whole set; R^2 is that of out-of-fold predictions (images split into
4 folds, fewer for under 8 images, by index modulo the folds; each fold predicted by a ridge fitted on the
others), so every image is held out once; in each fold the features are standardised with the training part's
statistics and the ridge strength is chosen by leave-one-out error on the training part (closed form) from a
fixed grid.
"""

from __future__ import annotations

import torch

ALPHAS = tuple(10.0**e for e in range(-3, 5))  # ridge strengths, relative to the mean squared feature norm


def central_patch(grid: tuple[int, int]) -> int:
    """Flat row-major index of the central patch ``(h // 2, w // 2)`` of a ``(h, w)`` grid."""
    return (grid[0] // 2) * grid[1] + grid[1] // 2


def class_fractions(labels: torch.Tensor, classes) -> torch.Tensor:
    """``(N, C)``: per image, the fraction of all its pixels (ignored ones included) labelled with each class."""
    flat = labels.reshape(len(labels), -1)
    return torch.stack([(flat == c).double().mean(dim=1) for c in classes], dim=1)


def most_common_classes(labels: torch.Tensor, k: int = 3, ignore_index: int = 255) -> list[int]:
    """The ``k`` labels with the most pixels over all images (``ignore_index`` left out), most common first."""
    values, counts = torch.unique(labels[labels != ignore_index], return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)
    return [int(values[i]) for i in order[:k]]


def _kernel(a: torch.Tensor, b: torch.Tensor, c2: float) -> torch.Tensor:
    """``a b^T + c2``: the linear kernel with a constant feature of value ``sqrt(c2)`` (the intercept)."""
    return a @ b.t() + c2


def _ridge_loo(x: torch.Tensor, y: torch.Tensor, alphas) -> tuple[torch.Tensor, float, float]:
    """Kernel-form ridge of ``y (N, C)`` on ``x (N, D)`` with an intercept: the dual weights ``G y`` of the strength
    (``alpha`` x the mean of ``diag(x x^T)``) with the smallest leave-one-out squared error, that strength and the
    intercept feature's ``c2``. With ``G = (K + lambda I)^-1`` the leave-one-out residual of sample i is
    ``(G y)_i / G_ii`` (``1 - H_ii = lambda G_ii`` for the hat matrix ``H = I - lambda G``): exact, and stable where
    ``D > N`` lets small strengths interpolate. The intercept is a constant feature 100 x the features' scale, so
    its penalty is negligible; centring ``x`` and ``y`` instead would leak the left-out sample (it is minus the sum
    of the others)."""
    scale = float((x * x).sum(1).mean().clamp(min=1e-12))
    c2 = 1e4 * scale
    k = _kernel(x, x, c2)
    eye = torch.eye(len(x), dtype=x.dtype)
    best = None
    for a in alphas:
        inv = torch.linalg.inv(k + a * scale * eye)
        dual = inv @ y
        err = float(((dual / inv.diagonal()[:, None]) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, dual, a * scale)
    return best[1], best[2], c2


def out_of_fold_predictions(feats: torch.Tensor, targets: torch.Tensor, folds: int = 4, alphas=ALPHAS):
    """Predictions ``(N, C)`` of ``targets`` from ``feats (N, D)``, each image by a ridge fitted without its fold;
    fewer folds (at least 2 images each) when there are under ``2 * folds`` images."""
    n = len(feats)
    folds = min(folds, n // 2)
    if folds < 2:
        raise ValueError(f"the global-context probe needs at least 4 images, got {n}")
    x, y = feats.double(), targets.double()
    pred = torch.empty_like(y)
    fold = torch.arange(n) % folds
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(0), x[tr].std(0).clamp(min=1e-8)
        xtr, xte = (x[tr] - mu) / sd, (x[te] - mu) / sd
        dual, _, c2 = _ridge_loo(xtr, y[tr], alphas)
        pred[te] = _kernel(xte, xtr, c2) @ dual
    return pred


def r2_scores(y: torch.Tensor, pred: torch.Tensor) -> list[float]:
    """Coefficient of determination per column: ``1 - sum (y - pred)^2 / sum (y - mean y)^2`` (NaN for a constant
    column)."""
    y, pred = y.double(), pred.double()
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return [float(1 - r / t) if t > 0 else float("nan") for r, t in zip(ss_res, ss_tot)]


def null_predictions(targets: torch.Tensor, folds: int = 4) -> torch.Tensor:
    """The floor of :func:`out_of_fold_predictions`: each image predicted by the mean over the other folds."""
    n = len(targets)
    folds = max(2, min(folds, n // 2))
    fold = torch.arange(n) % folds
    y = targets.double()
    return torch.stack([y[fold != fold[i]].mean(0) for i in range(n)])


def global_context_r2(patch_feats: torch.Tensor, labels: torch.Tensor, grid, k: int = 3, folds: int = 4) -> dict:
    """The probe on ``patch_feats (N, h*w, D)`` and pixel labels ``(N, H, W)``: ``{"classes": [...], "r2":
    {class: R^2}, "r2_mean": mean, "r2_null_mean": the mean R^2 of predicting the other folds' mean}`` for the
    ``k`` most common classes (out-of-fold R^2 of a constant is slightly negative: the floor to beat)."""
    classes = most_common_classes(labels, k)
    y = class_fractions(labels, classes)
    pred = out_of_fold_predictions(patch_feats[:, central_patch(grid)], y, folds)
    r2, null = r2_scores(y, pred), r2_scores(y, null_predictions(y, folds))
    out = {"classes": classes, "r2": {str(c): v for c, v in zip(classes, r2)}, "r2_mean": sum(r2) / len(r2)}
    return dict(out, r2_null_mean=sum(null) / len(null))
