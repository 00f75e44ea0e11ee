"""``tools/probe_localrep.py``: the LocalRep probes on one frozen backbone, written, plotted and recorded."""

from __future__ import annotations

import json
import os

import torch

from . import localrep as lr

BLUR = (0.0, 1.0, 2.0, 4.0)
NOISE = (0.0, 0.05, 0.1, 0.2)
BAND = (0.0, 0.05, 0.1, 0.2)
SCALES = (0.8, 0.9, 1.1, 1.2)  # the LocalRep paper's scalings


def retrieval_suite(feats_fn, images, patch: int, seed: int) -> dict:
    """``{transform: scores}`` for whole-patch shifts by 1 and 2, a 90-degree rotation, rescaling about the centre
    by :data:`SCALES` (``scale<f>``) and the robustness curves (``blur/<sigma>``, ``noise/<sigma>``,
    ``band/<sigma>``; identity correspondence)."""
    out = {
        f"shift{k}": lr.retrieval_under(feats_fn, images, patch, lambda x, k=k: lr.shift_patches(x, k, patch))
        for k in (1, 2)
    }
    out["rot90"] = lr.retrieval_under(feats_fn, images, patch, lambda x: lr.rotate90(x, patch))
    for f in SCALES:
        scale = lambda x, f=f: lr.scale_about_centre(x, f, patch)  # noqa: E731
        out[f"scale{f:g}"] = lr.retrieval_under(feats_fn, images, patch, scale)
    n = (images.shape[2] // patch) * (images.shape[3] // patch)
    ident = torch.arange(n)
    curves = {"blur": (BLUR, lr.gaussian_blur), "noise": (NOISE, lambda x, s: lr.gaussian_noise(x, s, seed))}
    curves["band"] = (BAND, lambda x, s: lr.band_noise(x, s, seed=seed))
    for name, (levels, fn) in curves.items():
        for s in levels:
            out[f"{name}/{s:g}"] = lr.retrieval_under(feats_fn, images, patch, lambda x, s=s, fn=fn: (fn(x, s), ident))
    return out


def plot_curves(scores: dict, path: str, title: str) -> str:
    """Patch-level retrieval accuracy against the severity of blur, noise and band-limited noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, (name, levels) in zip(axes, (("blur", BLUR), ("noise", NOISE), ("band", BAND))):
        for key, style in (("patch", "-o"), ("image", "--s")):
            ax.plot(levels, [scores[f"{name}/{s:g}"][key] for s in levels], style, label=key)
        ax.set_title(f"{name} (sigma)", fontsize=9)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def context_probe(feats_fn, ade: str, side: int, patch: int, max_images: int | None = None) -> dict:
    """:func:`~transfer.analysis.localrep_context.global_context_r2` on the training and validation images of the
    ADE-layout set ``ade`` together (labels ``0`` ignored), at ``side`` pixels."""
    from .localrep_context import global_context_r2
    from .maxa.targets import load_ade_split

    parts = [load_ade_split(ade, split, side, max_images) for split in ("training", "validation")]
    images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    res = global_context_r2(feats_fn(images), labels, (side // patch, side // patch))
    return dict(res, num_images=len(images))


def localrep_report(
    checkpoint,
    images,
    out,
    ade=None,
    size=96,
    max_images=16,
    frames=10,
    objects=4,
    max_gap=6,
    seed=0,
    random_init=False,
    progress=True,
    **read_options,
) -> list[str]:
    """Retrieval (shift, rotation, scale), robustness curves and tracking for ``checkpoint`` on the first
    ``max_images`` images of ``images`` and a toy moving-objects sequence, and with ``ade`` (an ADE-layout set) the
    global-context probe; ``localrep_results.json`` and ``localrep_robustness.png`` under ``out``; protocol
    ``localrep`` in the results database."""
    from resultsdb import record_result

    from .backbones import load_adapter
    from .images import list_images, load_image

    if min(size, max_images, frames, objects, max_gap) < 1:
        raise ValueError("--size, --max-images, --frames, --objects and --max-gap must be positive")
    adapter = load_adapter(checkpoint, image_size=size, random_init=random_init, seed=seed, **read_options)
    p = adapter.patch_size
    side = max(p, (size // p) * p)
    batch = torch.stack([load_image(f, side) for f in list_images(images, max_images)])
    feats_fn = lambda x: lr.patch_features(adapter, x)  # noqa: E731
    retrieval = retrieval_suite(feats_fn, batch, p, seed)
    seq, boxes = lr.moving_objects(frames, objects, side, obj=max(p, side // 4), seed=seed)
    fmap = feats_fn(seq).transpose(1, 2).reshape(len(seq), -1, side // p, side // p)
    tracking = lr.tracking_accuracy(lr.roi_features(fmap, boxes, p), max_gap)
    context = context_probe(feats_fn, ade, side, p) if ade else None
    os.makedirs(out, exist_ok=True)
    res = dict(checkpoint=os.path.abspath(checkpoint), random_init=random_init, seed=seed, size=side)
    res.update(num_images=len(batch), retrieval=retrieval, tracking={str(k): v for k, v in tracking.items()})
    res["context"] = context
    path = os.path.join(out, "localrep_results.json")
    with open(path, "w") as fh:
        json.dump(res, fh, indent=1)
    png = plot_curves(retrieval, os.path.join(out, "localrep_robustness.png"), adapter.name)
    setting = dict(images=os.path.abspath(images), size=side, max_images=max_images, frames=frames, objects=objects)
    setting["ade"] = os.path.abspath(ade) if ade else None
    record_result(checkpoint, "localrep", record_metrics(res), setting, seed, random_init, out)
    name = f"{adapter.name}{' (random init)' if random_init else ''}"
    return report_lines(name, res) + [f"wrote {path}", f"wrote {png}"]


def record_metrics(res: dict) -> dict:
    """The ``localrep`` record's metrics from ``localrep_results.json``'s content ``res``."""
    tracking = res["tracking"]
    metrics = {f"retrieval/{t}/{k}": v for t, s in res["retrieval"].items() for k, v in s.items()}
    metrics.update({f"tracking/gap{k}": v for k, v in tracking.items()})
    metrics["tracking/mean"] = sum(tracking.values()) / len(tracking)
    if res.get("context"):
        metrics.update({f"context/r2/{c}": v for c, v in res["context"]["r2"].items()})
        metrics["context/r2_mean"] = res["context"]["r2_mean"]
        metrics["context/r2_null_mean"] = res["context"]["r2_null_mean"]
    return metrics


def report_lines(name: str, res: dict) -> list[str]:
    """The tool's printed summary of ``res``."""
    lines = [f"{name}: {res['num_images']} images at {res['size']}px"]
    lines += [
        f"  retrieval {t:<10} image {s['image']:.4f} patch {s['patch']:.4f} within-1 {s['within1']:.4f}"
        for t, s in res["retrieval"].items()
    ]
    lines.append("  tracking " + " ".join(f"gap {k}: {v:.3f}" for k, v in res["tracking"].items()))
    context = res.get("context")
    if context:
        per = ", ".join(f"class {c}: {v:.3f}" for c, v in context["r2"].items())
        lines.append(
            f"  global context R^2 (central patch, {context['num_images']} images): {per}; mean "
            f"{context['r2_mean']:.3f} (predicting the mean: {context['r2_null_mean']:.3f})"
        )
    return lines
