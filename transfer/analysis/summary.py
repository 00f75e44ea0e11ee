"""The evaluation summary (``tools/evaluate.sh``): the headline numbers read back from each probe's output files,
as ``summary.md``, ``summary.csv`` and a bar plot ``summary.png`` (docs/evaluation.md)."""

from __future__ import annotations

import csv
import json
import math
import os


def _read_json(path: str):
    with open(path) as fh:
        return json.load(fh)


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def cls_knn_rows(folder: str) -> list[tuple]:
    d = _read_json(os.path.join(folder, "cls_knn.json"))
    return [("cls_knn", f"CLS {d.get('k', 5)}-NN top-1 (toy textures)", d["top1"])]


def dense_rows(folder: str) -> list[tuple]:
    """The last probed layer's patch mIoU per probe and removed top-variance dimensions."""
    rows = _read_csv(os.path.join(folder, "probe_results.csv"))
    last = max(int(r["layer"]) for r in rows)
    return [
        (
            "probe_dense",
            f"{r['probe']} patch mIoU, layer {last}, top-{r['remove_top_var']} var removed",
            float(r["miou"]),
        )
        for r in rows
        if int(r["layer"]) == last
    ]


def position_rows(folder: str) -> list[tuple]:
    d = _read_json(os.path.join(folder, "position_accuracy.json"))
    mean = d.get("mean_top1")
    return [
        ("probe_position", "position top-1, mean over the grid", math.nan if mean is None else mean),
        ("probe_position", "position chance level", d["chance"]),
    ]


def attention_rows(folder: str) -> list[tuple]:
    rows = _read_csv(os.path.join(folder, "attention_stats.csv"))
    nmi, mad = [float(r["nmi"]) for r in rows], [float(r["mad"]) for r in rows]
    return [
        ("attention", "NMI, last layer", nmi[-1]),
        ("attention", "NMI, mean over layers", sum(nmi) / len(nmi)),
        ("attention", "mean attention distance (px), last layer", mad[-1]),
    ]


def maxa_rows(folder: str) -> list[tuple]:
    """One headline number per MAXA task that ran (skipped tasks, e.g. depth without depth maps, left out)."""
    tasks = _read_json(os.path.join(folder, "maxa_results.json"))["tasks"]
    names = {
        "boundaries": ("iou", "MAXA instance boundaries IoU"),
        "distance": ("mse", "MAXA distance transform MSE"),
        "instances": ("ari", "MAXA instance discrimination ARI"),
        "semseg": ("miou", "MAXA semantic segmentation mIoU"),
        "depth": ("mse", "MAXA depth MSE"),
    }
    rows = [("maxa", label, tasks[t][key]) for t, (key, label) in names.items() if key in tasks.get(t, {})]
    if "iou_trivial" in tasks.get("boundaries", {}):
        rows.insert(1, ("maxa", "MAXA boundaries IoU of all-boundary (trivial)", tasks["boundaries"]["iou_trivial"]))
    return rows


def localrep_rows(folder: str) -> list[tuple]:
    """Patch retrieval under a 2-patch shift, a rotation, the strongest blur and noise, zoom out / in by 0.8 / 1.2;
    mean tracking accuracy; the global-context R^2 if it ran."""
    d = _read_json(os.path.join(folder, "localrep_results.json"))
    r, track = d["retrieval"], list(d["tracking"].values())
    rows = [("localrep", f"patch retrieval, {t}", r[t]["patch"]) for t in ("shift2", "rot90", "blur/4", "noise/0.2")]
    rows += [("localrep", f"patch retrieval, {t}", r[t]["patch"]) for t in ("scale0.8", "scale1.2") if t in r]
    rows.append(("localrep", "instance identification (image level), rot90", r["rot90"]["image"]))
    rows.append(("localrep", f"tracking association, mean over gaps 1-{len(track)}", sum(track) / len(track)))
    if d.get("context"):
        rows.append(("localrep", "global-context R^2 (central patch), mean of 3 classes", d["context"]["r2_mean"]))
        rows.append(("localrep", "global-context R^2 of predicting the mean (floor)", d["context"]["r2_null_mean"]))
    return rows


READERS = {
    "cls_knn": cls_knn_rows,
    "probe_dense": dense_rows,
    "probe_position": position_rows,
    "attention": attention_rows,
    "maxa": maxa_rows,
    "localrep": localrep_rows,
}


def collect(out: str, status: dict) -> list[tuple]:
    """``(probe, metric, value)`` for every step that succeeded; a step whose files cannot be read is skipped
    (its status says why)."""
    rows = []
    for name, st in status.items():
        reader = READERS.get(name)
        if reader is None or st.get("rc") != 0:
            continue
        try:
            rows += reader(os.path.join(out, name))
        except (OSError, KeyError, ValueError) as e:
            st["summary_error"] = repr(e)
    return rows


def write_summary(out: str, title: str, rows: list[tuple], status: dict) -> dict:
    """``summary.md`` (title, the table, each step's status), ``summary.csv`` and ``summary.png``; their paths."""
    paths = {k: os.path.join(out, f"summary.{k}") for k in ("md", "csv", "png")}
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["probe", "metric", "value"])
        w.writerows([p, m, f"{v:.6g}"] for p, m, v in rows)
    lines = [f"# Evaluation: {title}", "", "| probe | metric | value |", "|---|---|---|"]
    lines += [f"| {p} | {m} | {v:.4f} |" for p, m, v in rows]
    lines += ["", "| step | status | seconds |", "|---|---|---|"]
    for name, st in status.items():
        state = "ok" if st["rc"] == 0 else f"failed (exit {st['rc']}, {name}/log.txt)"
        if st.get("summary_error"):
            state += f"; summary: {st['summary_error']}"
        lines.append(f"| {name} | {state} | {st['seconds']} |")
    with open(paths["md"], "w") as fh:
        fh.write("\n".join(lines) + "\n")
    plot_summary(rows, paths["png"], title)
    return paths


def plot_summary(rows: list[tuple], path: str, title: str) -> None:
    """Horizontal bars of the fraction-valued numbers (accuracies, IoUs, NMI), one per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frac = [(f"{p}: {m}", v) for p, m, v in rows if 0.0 <= v <= 1.0]
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(frac), 1) + 1.2))
    ax.barh(range(len(frac)), [v for _, v in frac], color="C0")
    ax.set_yticks(range(len(frac)), [n for n, _ in frac], fontsize=7)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
