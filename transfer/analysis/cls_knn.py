"""Image-level k-NN probe on the frozen CLS token, over the toy texture classes.

Each image of :func:`toydata.toy_texture_classes` is one class's pattern (colours random per image), so a
CLS token that tells the classes apart must carry the pattern, not the colour. Features: the final-normed CLS
token; classifier: cosine k-NN with majority vote (ties to the nearest neighbour's class), trained on the ``train``
split and scored on the ``val`` split (independent random streams).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Cosine k-NN: majority label of the ``k`` nearest training rows; a tie goes to the class of the nearest row
    among the tied classes."""
    sim = F.normalize(test_x.float(), dim=-1) @ F.normalize(train_x.float(), dim=-1).t()
    k = min(int(k), train_x.shape[0])
    idx = sim.topk(k, dim=1).indices  # (T, k), nearest first
    labels = train_y[idx]
    n_classes = int(train_y.max()) + 1
    votes = F.one_hot(labels, n_classes).sum(dim=1).float()  # (T, C)
    # tie-break: a tiny bonus decreasing with neighbour rank for each neighbour's class
    bonus = torch.zeros_like(votes).scatter_reduce_(
        1, labels, (1.0 - torch.arange(k, dtype=torch.float32) / k).expand_as(labels).contiguous() * 1e-3, "amax"
    )
    return (votes + bonus).argmax(dim=1)


def cls_knn_accuracy(
    checkpoint: str,
    num_per_class: int = 24,
    size: int = 96,
    num_classes: int = 6,
    k: int = 5,
    random_init: bool = False,
    seed: int = 0,
    data_seed: int = 0,
    **read_options,
) -> float:
    """Top-1 accuracy of the CLS k-NN probe for ``checkpoint`` (or its architecture at random init, ``seed``)."""
    from toydata import toy_texture_classes

    from .backbones import load_adapter

    adapter = load_adapter(checkpoint, image_size=size, random_init=random_init, seed=seed, **read_options)

    def features(split):
        images, labels = toy_texture_classes(num_per_class, (size, size), num_classes, data_seed, split)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        feats = torch.cat([adapter.cls_tokens(adapter.normalize(x[i : i + 32])) for i in range(0, len(x), 32)])
        return feats, torch.from_numpy(labels)

    tr_x, tr_y = features("train")
    va_x, va_y = features("val")
    return float((knn_classify(tr_x, tr_y, va_x, k) == va_y).float().mean())


def cls_knn_report(
    checkpoint: str,
    out: str,
    progress: bool = True,
    **options,
) -> list[str]:
    """``tools/probe_cls_knn.py``: :func:`cls_knn_accuracy` (``options``: its keyword arguments), written to
    ``<out>/cls_knn.json`` and recorded in the results database; returns the lines to print."""
    import json
    import os

    from .records import record_cls_knn

    if min(options.get("num_per_class", 1), options.get("size", 1), options.get("k", 1)) < 1:
        raise ValueError("--num-per-class, --size and --k must be positive")
    top1 = cls_knn_accuracy(checkpoint, **options)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "cls_knn.json")
    setting = {k: v for k, v in options.items() if k in ("num_per_class", "size", "num_classes", "k", "seed")}
    with open(path, "w") as fh:
        json.dump(dict(setting, checkpoint=os.path.abspath(checkpoint), top1=top1, **_init(options)), fh, indent=1)
    record_cls_knn(checkpoint, top1, dict(setting, **_init(options)), out)
    chance = 1.0 / options.get("num_classes", 6)
    return [f"CLS {options.get('k', 5)}-NN top-1 {top1:.4f} (chance {chance:.4f})", f"wrote {path}"]


def _init(options: dict) -> dict:
    return {"random_init": bool(options.get("random_init")), "data_seed": options.get("data_seed", 0)}
