"""Cheap frozen-backbone dense probes (docs/protocols.md §4; the LocalRep paper).

Protocol:

- features: patch tokens after a block with the backbone's final LayerNorm applied (LocalRep applies it to inner
  layers too), images resized to ``size`` x ``size`` (rounded down to a multiple of the patch size);
- patch labels: the **majority** label of the patch's pixels (label maps resized with nearest neighbour); the
  ignore label takes part in the vote, and patches whose majority is the ignore label are skipped (not trained on,
  not evaluated). Ties go to the smallest label;
- optional removal of the ``m`` highest-variance feature dimensions, the variance computed over all training
  patch tokens (LocalRep's "MAE-m" diagnostic);
- **1-NN probe**: cosine similarity to every labelled training patch, the nearest one's label is the prediction
  (LocalRep does not state its metric; cosine is our choice, docs/protocols.md §4);
- **linear probe**: multinomial logistic regression on standardised features (train mean / std, the affine part
  of LocalRep's optional BatchNorm), trained with AdamW on the training patches for a few hundred steps;
- metrics on the validation patches: **mIoU** (mean over classes with a non-empty union of prediction and ground
  truth, i.e. MMSeg ``IoUMetric``'s ``nanmean``), patch accuracy (MMSeg's ``aAcc``) and mean class accuracy.
  All of it is computed here with torch only (no mmseg import); the tests compare it with MMSeg's helpers.

ADE20K layout: ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png`` with
``0`` = other/ignore and ``1..K`` = classes. With ``reduce_zero_label`` (default, as MMSeg's ``ADE20KDataset``)
labels become ``0..K-1`` and ``0`` becomes ``255`` (ignored).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


# ----------------------------------------------------------------------------------------------------------------
# labels


def majority_patch_labels(labels: torch.Tensor, patch_size: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-patch majority label: ``(H, W)`` or ``(B, H, W)`` integer maps -> ``(gh, gw)`` / ``(B, gh, gw)``.

    Pixels beyond the last full patch are cropped. The ignore label votes like any other; a patch whose majority
    is ``ignore_index`` gets ``ignore_index``. Ties go to the smallest label value.
    """
    squeeze = labels.ndim == 2
    if squeeze:
        labels = labels[None]
    if labels.ndim != 3:
        raise ValueError(f"expected (H, W) or (B, H, W) labels, got {tuple(labels.shape)}")
    labels = labels.long()
    if bool((labels < 0).any()):
        raise ValueError("labels must be non-negative")
    b, h, w = labels.shape
    p = int(patch_size)
    gh, gw = h // p, w // p
    if gh == 0 or gw == 0:
        raise ValueError(f"label map {h}x{w} is smaller than one {p}x{p} patch")
    lab = labels[:, : gh * p, : gw * p].reshape(b, gh, p, gw, p).permute(0, 1, 3, 2, 4).reshape(b * gh * gw, p * p)
    num_values = int(max(int(lab.max()), ignore_index)) + 1
    counts = torch.zeros(lab.shape[0], num_values, dtype=torch.int32)
    counts.scatter_add_(1, lab, torch.ones_like(lab, dtype=torch.int32))
    out = counts.argmax(1).reshape(b, gh, gw)  # first maximum -> smallest label on ties
    return out[0] if squeeze else out


def reduce_zero_label(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ADE20K convention: ``0 -> ignore_index``, ``k -> k - 1`` (MMSeg ``reduce_zero_label=True``)."""
    labels = labels.long()
    out = labels - 1
    out[labels == 0] = ignore_index
    return out


# ----------------------------------------------------------------------------------------------------------------
# features


def top_variance_dims(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the ``m`` dimensions of ``features`` ``(n, D)`` with the highest variance (descending)."""
    if features.ndim != 2:
        raise ValueError(f"expected (n, D) features, got {tuple(features.shape)}")
    d = features.shape[1]
    if not 0 <= m < d:
        raise ValueError(f"cannot remove {m} of {d} dimensions (0 <= m < D)")
    var = features.double().var(dim=0, unbiased=False)
    return torch.argsort(var, descending=True, stable=True)[:m]


def remove_dims(features: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """``features`` ``(n, D)`` without the columns ``dims``."""
    keep = torch.ones(features.shape[1], dtype=torch.bool)
    keep[dims.long()] = False
    return features[:, keep]


# ----------------------------------------------------------------------------------------------------------------
# classifiers


@torch.no_grad()
def nn_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """1-nearest-neighbour by cosine similarity: label of the most similar training row for each test row."""
    if train_x.shape[0] == 0:
        raise ValueError("1-NN probe: no labelled training patches")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"feature sizes differ: train {train_x.shape[1]}, test {test_x.shape[1]}")
    tr = F.normalize(train_x.float(), dim=1)
    out = torch.empty(test_x.shape[0], dtype=torch.long)
    for s in range(0, test_x.shape[0], chunk):
        te = F.normalize(test_x[s : s + chunk].float(), dim=1)
        out[s : s + chunk] = train_y[(te @ tr.T).argmax(1)]
    return out


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 4096,
    seed: int = 0,
) -> torch.Tensor:
    """Multinomial logistic regression (features standardised with the training statistics), AdamW; predictions."""
    if train_x.shape[0] == 0:
        raise ValueError("linear probe: no labelled training patches")
    gen = torch.Generator().manual_seed(seed)
    mean = train_x.float().mean(0, keepdim=True)
    std = train_x.float().std(0, unbiased=False, keepdim=True).clamp_min(1e-6)
    xs = (train_x.float() - mean) / std
    d = xs.shape[1]
    lin = torch.nn.Linear(d, num_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(num_classes, d, generator=gen) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    n = xs.shape[0]
    y = train_y.long()
    with torch.enable_grad():
        for _ in range(steps):
            if n > batch_size:
                idx = torch.randint(0, n, (batch_size,), generator=gen)
                xb, yb = xs[idx], y[idx]
            else:
                xb, yb = xs, y
            loss = F.cross_entropy(lin(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return lin((test_x.float() - mean) / std).argmax(1)


# ----------------------------------------------------------------------------------------------------------------
# metrics (MMSeg IoUMetric semantics, torch only)


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """``(C, C)`` counts, rows = ground truth, columns = prediction; ``gt == ignore_index`` entries dropped.

    Predictions outside ``0..C-1`` are not counted as any class's prediction (as MMSeg's ``histc`` does); they
    still count as ground-truth area of their row.
    """
    pred, gt = pred.reshape(-1).long(), gt.reshape(-1).long()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth sizes differ: {pred.numel()} vs {gt.numel()}")
    keep = gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    if bool(((gt < 0) | (gt >= num_classes)).any()):
        raise ValueError(f"ground-truth labels outside 0..{num_classes - 1} (and != ignore {ignore_index})")
    valid = (pred >= 0) & (pred < num_classes)
    cm = torch.bincount(gt[valid] * num_classes + pred[valid], minlength=num_classes**2).reshape(num_classes, -1)
    missed = torch.bincount(gt[~valid], minlength=num_classes)  # gt area whose prediction is no class
    return cm.double(), missed.double()


def segmentation_metrics(pred, gt, num_classes: int, ignore_index: int = IGNORE_INDEX) -> dict:
    """mIoU (nanmean over classes with non-empty union), aAcc, mAcc and per-class IoU / Acc (NaN if undefined)."""
    cm, missed = confusion_matrix(pred, gt, num_classes, ignore_index)
    inter = cm.diag()
    area_gt = cm.sum(1) + missed
    area_pred = cm.sum(0)
    union = area_gt + area_pred - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))
    acc = torch.where(area_gt > 0, inter / area_gt.clamp_min(1), torch.full_like(inter, math.nan))
    total = float(area_gt.sum())

    def nanmean(t):
        ok = ~torch.isnan(t)
        return float(t[ok].mean()) if bool(ok.any()) else math.nan

    return {
        "miou": nanmean(iou),
        "acc": float(inter.sum()) / total if total > 0 else math.nan,
        "macc": nanmean(acc),
        "iou": iou.tolist(),
        "class_acc": acc.tolist(),
        "num_classes_present": int((union > 0).sum()),
        "num_patches": int(total),
    }


# ----------------------------------------------------------------------------------------------------------------
# data + features


def ade_pairs(root: str, split: str) -> list[tuple[str, str]]:
    """``(image, label)`` paths of an ADE20K-layout split (``training`` / ``validation``), matched by file stem."""
    img_dir = os.path.join(root, "images", split)
    ann_dir = os.path.join(root, "annotations", split)
    for d in (img_dir, ann_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"not an ADE20K layout: {d} is missing")
    anns = {os.path.splitext(n)[0]: os.path.join(ann_dir, n) for n in os.listdir(ann_dir) if n.endswith(".png")}
    pairs = []
    for n in sorted(os.listdir(img_dir)):
        stem, ext = os.path.splitext(n)
        if ext.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        if stem not in anns:
            raise FileNotFoundError(f"no label {stem}.png in {ann_dir} for image {n}")
        pairs.append((os.path.join(img_dir, n), anns[stem]))
    if not pairs:
        raise FileNotFoundError(f"no images in {img_dir}")
    return pairs


def load_split(pairs, side: int, patch_size: int, reduce_zero: bool = True, max_images: int | None = None):
    """Images ``(B, 3, side, side)`` in [0, 1] and majority patch labels ``(B, gh, gw)`` (ignore = 255)."""
    from .images import load_image, load_label

    pairs = list(pairs)[: max_images or None]
    imgs, labs = [], []
    for img_path, lab_path in pairs:
        imgs.append(load_image(img_path, side))
        lab = load_label(lab_path, side)
        labs.append(reduce_zero_label(lab) if reduce_zero else lab)
    labels = torch.stack(labs)
    return torch.stack(imgs), majority_patch_labels(labels, patch_size, IGNORE_INDEX)


@torch.no_grad()
def extract_features(
    adapter, images: torch.Tensor, layers, batch_size: int = 8, progress: bool = True, desc: str = "features"
) -> dict:
    """``{layer (0-based): (B*N, D) float32}`` final-normed patch tokens, row-major per image."""
    from tqdm import tqdm

    wanted = adapter.resolve_layers(layers)
    feats = {i: [] for i in wanted}
    for s in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        outs = adapter.tokens(adapter.normalize(images[s : s + batch_size]), wanted)
        for i, t in zip(wanted, outs):
            feats[i].append(t.reshape(-1, t.shape[-1]).float())
    return {i: torch.cat(v) for i, v in feats.items()}


@dataclass
class ProbeResult:
    """One row of ``probe_results.csv``."""

    checkpoint: str
    init: str
    layer: int  # 1-based block number
    probe: str
    remove_top_var: int
    miou: float
    acc: float
    macc: float
    num_classes: int
    num_classes_present: int
    num_train_patches: int
    num_val_patches: int
    dim: int
    seconds: float
    iou: list = field(default_factory=list)

    def row(self) -> dict:
        d = asdict(self)
        d.pop("iou")
        return d


def run_probes(
    train_feats: dict,
    train_labels: torch.Tensor,
    val_feats: dict,
    val_labels: torch.Tensor,
    num_classes: int,
    probes: Sequence[str] = ("nn",),
    remove_top_var: Sequence[int] = (0,),
    checkpoint: str = "",
    init: str = "trained",
    linear_steps: int = 300,
    seed: int = 0,
    progress: bool = True,
) -> list[ProbeResult]:
    """Every (layer, m, probe) combination on precomputed features; labels ``(B, gh, gw)`` with ignore = 255."""
    ytr_all = train_labels.reshape(-1)
    yva_all = val_labels.reshape(-1)
    tr_ok = _labelled(ytr_all, "training")
    va_ok = _labelled(yva_all, "validation")
    results = []
    for layer in sorted(train_feats):
        xtr_all, xva_all = train_feats[layer], val_feats[layer]
        if xtr_all.shape[0] != ytr_all.numel() or xva_all.shape[0] != yva_all.numel():
            raise ValueError("features and labels disagree in the number of patches")
        for m in remove_top_var:
            xtr, xva = _without_top_variance(xtr_all, xva_all, m)
            xtr, ytr, xva, yva = xtr[tr_ok], ytr_all[tr_ok], xva[va_ok], yva_all[va_ok]
            row = dict(checkpoint=checkpoint, init=init, layer=layer + 1, remove_top_var=int(m))
            for probe in probes:
                r = _probe(probe, xtr, ytr, xva, yva, num_classes, linear_steps, seed, row)
                results.append(r)
                if progress:
                    print(
                        f"  layer {r.layer:>2} m={r.remove_top_var:<4} {probe:<6} mIoU {r.miou:.4f} "
                        f"acc {r.acc:.4f} ({r.seconds:.1f}s)",
                        flush=True,
                    )
    return results


def _labelled(labels: torch.Tensor, split: str) -> torch.Tensor:
    """Mask of the patches with a label; an error when there is none."""
    ok = labels != IGNORE_INDEX
    if int(ok.sum()) == 0:
        raise ValueError(f"no labelled {split} patches (every patch's majority label is the ignore label)")
    return ok


def _without_top_variance(xtr: torch.Tensor, xva: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets without the ``m`` dimensions of highest variance over all training patch tokens."""
    if not m:
        return xtr, xva
    dims = top_variance_dims(xtr, m)
    return remove_dims(xtr, dims), remove_dims(xva, dims)


def _probe(probe: str, xtr, ytr, xva, yva, num_classes: int, linear_steps: int, seed: int, row: dict) -> ProbeResult:
    """Train one probe on the labelled training patches and score it on the validation patches; ``row`` names the
    checkpoint, init, layer and ``remove_top_var`` of the result."""
    import time

    t0 = time.time()
    if probe == "nn":
        pred = nn_probe(xtr, ytr, xva)
    elif probe == "linear":
        pred = linear_probe(xtr, ytr, xva, num_classes, steps=linear_steps, seed=seed)
    else:
        raise ValueError(f"unknown probe {probe!r} (nn, linear)")
    met = segmentation_metrics(pred, yva, num_classes)
    return ProbeResult(
        **row,
        probe=probe,
        miou=met["miou"],
        acc=met["acc"],
        macc=met["macc"],
        num_classes=num_classes,
        num_classes_present=met["num_classes_present"],
        num_train_patches=int(ytr.numel()),
        num_val_patches=int(yva.numel()),
        dim=int(xtr.shape[1]),
        seconds=round(time.time() - t0, 3),
        iou=met["iou"],
    )


def probe_checkpoint(
    checkpoint: str,
    data_root: str,
    size: int = 224,
    layers="last",
    probes: Sequence[str] = ("nn", "linear"),
    remove_top_var: Sequence[int] = (0,),
    random_init: bool = False,
    reduce_zero: bool = True,
    num_classes: int | None = None,
    max_train: int | None = None,
    max_val: int | None = None,
    batch_size: int = 8,
    linear_steps: int = 300,
    seed: int = 0,
    progress: bool = True,
    **read_options,
) -> list[ProbeResult]:
    """Load ``checkpoint`` (or its architecture at random init), extract features on the ADE-layout set, probe."""
    from .backbones import load_adapter

    adapter = load_adapter(checkpoint, image_size=size, random_init=random_init, seed=seed, **read_options)
    p = adapter.patch_size
    side = max(p, (size // p) * p)
    tr_img, tr_lab = load_split(ade_pairs(data_root, "training"), side, p, reduce_zero, max_train)
    va_img, va_lab = load_split(ade_pairs(data_root, "validation"), side, p, reduce_zero, max_val)
    seen = torch.cat([tr_lab.reshape(-1), va_lab.reshape(-1)])
    seen = seen[seen != IGNORE_INDEX]
    k = int(seen.max()) + 1 if seen.numel() else 1
    if num_classes is None:
        num_classes = k
    elif num_classes < k:
        raise ValueError(f"--num-classes {num_classes} but labels go up to {k - 1}")
    init = "random" if random_init else "trained"
    if progress:
        print(
            f"[{adapter.name} ({init})] {tr_img.shape[0]} train / {va_img.shape[0]} val images at {side}px, "
            f"grid {side // p}^2, {num_classes} classes, depth {adapter.depth}, dim {adapter.embed_dim}",
            flush=True,
        )
    trf = extract_features(adapter, tr_img, layers, batch_size, progress, desc="train features")
    vaf = extract_features(adapter, va_img, layers, batch_size, progress, desc="val features")
    return run_probes(
        trf, tr_lab, vaf, va_lab, num_classes, probes, remove_top_var, adapter.name, init, linear_steps, seed, progress
    )


def write_results(results: Sequence[ProbeResult], out_dir: str) -> tuple[str, str]:
    """``probe_results.csv`` (one row per result) and ``probe_results.json`` (with per-class IoU)."""
    import csv
    import json

    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "probe_results.csv")
    json_path = os.path.join(out_dir, "probe_results.json")
    rows = [r.row() for r in results]
    with open(csv_path, "w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    with open(json_path, "w") as fh:
        json.dump(
            [
                {k: (clean(v) if not isinstance(v, list) else [clean(x) for x in v]) for k, v in asdict(r).items()}
                for r in results
            ],
            fh,
            indent=1,
        )
    return csv_path, json_path


def format_table(results: Sequence[ProbeResult]) -> str:
    """Plain-text table of the results."""
    head = f"{'checkpoint':<22} {'init':<8} {'layer':>5} {'probe':<7} {'m':>4} {'mIoU':>7} {'acc':>7} {'mAcc':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.checkpoint[:22]:<22} {r.init:<8} {r.layer:>5} {r.probe:<7} {r.remove_top_var:>4} "
            f"{r.miou:>7.4f} {r.acc:>7.4f} {r.macc:>7.4f}"
        )
    return "\n".join(lines)


def dense_probe_report(
    checkpoint: str,
    data: str,
    out: str,
    probe: str = "both",
    size: int = 224,
    batch_size: int = 8,
    remove_top_var: Sequence[int] = (0,),
    **options,
) -> list[str]:
    """``tools/probe_dense.py``: check the arguments, run :func:`probe_checkpoint` on the ADE-layout folder ``data``
    (``probe``: ``nn``, ``linear`` or ``both``; ``options``: its other keyword arguments), write
    ``probe_results.{csv,json}`` under ``out`` and return the lines to print."""
    if size < 1 or batch_size < 1 or any(m < 0 for m in remove_top_var):
        raise ValueError("--size/--batch-size must be positive, --remove-top-var >= 0")
    results = probe_checkpoint(
        checkpoint,
        data,
        size=size,
        probes=("nn", "linear") if probe == "both" else (probe,),
        remove_top_var=remove_top_var,
        batch_size=batch_size,
        **options,
    )
    csv_path, json_path = write_results(results, out)
    from .records import record_dense

    setting = dict(options, data=os.path.abspath(data), probe=probe, size=size, remove_top_var=list(remove_top_var))
    record_dense(checkpoint, results, setting, out)
    return [format_table(results), f"wrote {csv_path}", f"wrote {json_path}"]
