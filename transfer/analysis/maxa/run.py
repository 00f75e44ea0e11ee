"""MAXA evaluation of one frozen backbone: features extracted once, one adapter trained per task (Adam, the
paper's learning rates), scored on the validation split (the MAXA paper, App. A.1; docs/evaluation.md)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adapter import MAXA
from .metrics import binary_iou, instance_ari
from .targets import IGNORE_INDEX, boundaries, normalised_distance

# task -> (adapter outputs, Adam lr); instance discrimination: 32 latent channels, then a linear classifier
TASKS = {"boundaries": (1, 2e-3), "distance": (1, 1e-3), "instances": (32, 1e-3), "semseg": (None, 1e-3)}
TASKS["depth"] = (1, 2e-3)


@dataclass
class Split:
    """Frozen features ``(N, H*W, D)`` and the dense targets of one split at the output resolution."""

    feats: torch.Tensor
    targets: torch.Tensor


@torch.no_grad()
def extract(adapter, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Final-normed last-layer patch tokens ``(N, H*W, D)`` of images in [0, 1]."""
    return torch.cat(
        [adapter.tokens(adapter.normalize(images[i : i + batch_size]))[0] for i in range(0, len(images), batch_size)]
    )


def task_targets(task: str, labels: torch.Tensor) -> torch.Tensor:
    """Targets of ``task`` from instance maps (boundaries, distance, instances), semantic labels or depth."""
    if task == "boundaries":
        return torch.stack([boundaries(m) for m in labels]).float()
    if task == "distance":
        return torch.stack([normalised_distance(m) for m in labels])
    return labels


def _loss(task: str, out: torch.Tensor, target: torch.Tensor, classifier=None) -> torch.Tensor:
    if task == "boundaries":
        return F.binary_cross_entropy_with_logits(out[:, 0], target)
    if task in ("distance", "depth"):
        return F.mse_loss(out[:, 0], target)
    if task == "instances":  # every training instance its own class; background pixels ignored
        return F.cross_entropy(classifier(out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), target, ignore_index=-1)
    return F.cross_entropy(out, target, ignore_index=IGNORE_INDEX)


def instance_classes(instances: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Training instance maps -> one class per (image, instance), background -1; and the number of classes."""
    out = torch.full_like(instances, -1)
    n = 0
    for i, m in enumerate(instances):
        for v in torch.unique(m[m > 0]).tolist():
            out[i][m == v] = n
            n += 1
    return out, n


def train_adapter(task, train: Split, grids, out_dim, lr, steps=300, batch_size=8, seed=0, dim=32, heads=8):
    """A MAXA adapter (and, for instances, its linear instance classifier) trained with Adam for ``steps``
    iterations on random batches; returns ``(adapter, classifier or None, final loss)``."""
    torch.manual_seed(seed)
    feat_grid, query_grid = grids
    model = MAXA(train.feats.shape[-1], out_dim, feat_grid, query_grid, dim=dim, heads=heads)
    targets, classifier = train.targets, None
    if task == "instances":
        targets, n = instance_classes(targets)
        classifier = torch.nn.Linear(out_dim, max(n, 1))
    params = list(model.parameters()) + (list(classifier.parameters()) if classifier else [])
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(math.nan)
    for _ in range(steps):
        idx = torch.randint(len(targets), (min(batch_size, len(targets)),), generator=g)
        loss = _loss(task, model(train.feats[idx]), targets[idx], classifier)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), classifier, float(loss.detach())


THRESHOLDS = tuple(i / 100 for i in range(2, 100, 2))  # boundary probabilities tried on the training split


@torch.no_grad()
def train_threshold(model, train: Split, batch_size: int = 16) -> float:
    """The boundary probability threshold (of :data:`THRESHOLDS`) with the best IoU on the training split.

    The MAXA paper trains boundaries with plain BCE and scores IoU without naming a threshold. At our scale (a few
    hundred steps, boundaries ~6% of the pixels) a BCE head's probabilities stay under 0.5 everywhere, so a fixed
    0.5 scores IoU 0 for every backbone; the threshold is therefore chosen on the training images, never on the
    validation ones (docs/evaluation.md)."""
    prob = torch.cat(
        [model(train.feats[i : i + batch_size])[:, 0].sigmoid() for i in range(0, len(train.feats), batch_size)]
    )
    gt = train.targets > 0.5
    ious = [binary_iou(prob > t, gt) for t in THRESHOLDS]
    return THRESHOLDS[max(range(len(ious)), key=ious.__getitem__)]


@torch.no_grad()
def score(task: str, model, val: Split, num_classes: int | None = None, seed: int = 0, threshold=0.5) -> dict:
    """The task's metrics on the validation split: boundaries IoU (probabilities over ``threshold``, and over
    0.5), the IoU of predicting every pixel a boundary (``iou_trivial``) and BCE; distance/depth MSE; instances mean
    ARI over images with instances; semseg mIoU (MMSeg semantics,
    :func:`transfer.analysis.probes.segmentation_metrics`)."""
    from ..probes import segmentation_metrics

    out = model(val.feats)
    t = val.targets
    if task == "boundaries":
        prob, gt = out[:, 0].sigmoid(), t > 0.5
        return {
            "iou": binary_iou(prob > threshold, gt),
            "iou_p50": binary_iou(prob > 0.5, gt),
            "iou_trivial": binary_iou(torch.ones_like(gt), gt),
            "threshold": float(threshold),
            "bce": float(F.binary_cross_entropy_with_logits(out[:, 0], t)),
        }
    if task in ("distance", "depth"):
        return {"mse": float(F.mse_loss(out[:, 0], t))}
    if task == "instances":
        aris = [a for a in (instance_ari(o, m, seed) for o, m in zip(out, t)) if a is not None]
        return {"ari": sum(aris) / len(aris) if aris else math.nan, "num_images": len(aris)}
    met = segmentation_metrics(out.argmax(1).reshape(-1), t.reshape(-1), num_classes)
    return {"miou": met["miou"], "acc": met["acc"]}


def run_task(task: str, train: Split, val: Split, grids, steps: int, seed: int, num_classes=None) -> dict:
    """Train and score one task; the metrics plus the adapter's learnable parameters and the seconds taken."""
    out_dim, lr = TASKS[task]
    out_dim = num_classes if out_dim is None else out_dim
    t0 = time.time()
    model, classifier, loss = train_adapter(task, train, grids, out_dim, lr, steps=steps, seed=seed)
    threshold = train_threshold(model, train) if task == "boundaries" else 0.5
    res = score(task, model, val, num_classes, seed, threshold)
    n = sum(p.numel() for p in model.parameters()) + (
        sum(p.numel() for p in classifier.parameters()) if classifier else 0
    )
    return dict(res, train_loss=loss, params=n, seconds=round(time.time() - t0, 1))
