"""``tools/probe_localrep.py``: the LocalRep probes on one frozen backbone, written, plotted and recorded."""

from __future__ import annotations

import json
import os

import torch

from . import localrep as lr

BLUR = (0.0, 1.0, 2.0, 4.0)
NOISE = (0.0, 0.05, 0.1, 0.2)
BAND = (0.0, 0.05, 0.1, 0.2)


def retrieval_suite(feats_fn, images, patch: int, seed: int) -> dict:
    """``{transform: scores}`` for whole-patch shifts by 1 and 2, a 90-degree rotation and the robustness
    curves (``blur/<sigma>``, ``noise/<sigma>``, ``band/<sigma>``; identity correspondence)."""
    out = {
        f"shift{k}": lr.retrieval_under(feats_fn, images, patch, lambda x, k=k: lr.shift_patches(x, k, patch))
        for k in (1, 2)
    }
    out["rot90"] = lr.retrieval_under(feats_fn, images, patch, lambda x: lr.rotate90(x, patch))
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


def localrep_report(
    checkpoint,
    images,
    out,
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
    """Retrieval (shift, rotation), robustness curves and tracking for ``checkpoint`` on the first ``max_images``
    images of ``images`` and a toy moving-objects sequence; ``localrep_results.json`` and
    ``localrep_robustness.png`` under ``out``; protocol ``localrep`` in the results database."""
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
    os.makedirs(out, exist_ok=True)
    res = dict(checkpoint=os.path.abspath(checkpoint), random_init=random_init, seed=seed, size=side)
    res.update(num_images=len(batch), retrieval=retrieval, tracking={str(k): v for k, v in tracking.items()})
    path = os.path.join(out, "localrep_results.json")
    with open(path, "w") as fh:
        json.dump(res, fh, indent=1)
    png = plot_curves(retrieval, os.path.join(out, "localrep_robustness.png"), adapter.name)
    metrics = {f"retrieval/{t}/{k}": v for t, s in retrieval.items() for k, v in s.items()}
    metrics.update({f"tracking/gap{k}": v for k, v in tracking.items()})
    metrics["tracking/mean"] = sum(tracking.values()) / len(tracking)
    setting = dict(images=os.path.abspath(images), size=side, max_images=max_images, frames=frames, objects=objects)
    record_result(checkpoint, "localrep", metrics, setting, seed, random_init, out)
    lines = [f"{adapter.name}{' (random init)' if random_init else ''}: {len(batch)} images at {side}px"]
    lines += [
        f"  retrieval {t:<10} image {s['image']:.4f} patch {s['patch']:.4f} within-1 {s['within1']:.4f}"
        for t, s in retrieval.items()
    ]
    lines.append("  tracking " + " ".join(f"gap {k}: {v:.3f}" for k, v in tracking.items()))
    return lines + [f"wrote {path}", f"wrote {png}"]
