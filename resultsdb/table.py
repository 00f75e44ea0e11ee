"""Paper-style tables and plots of records: rows methods (or checkpoints), columns ``protocol:metric``, cells
mean ± std over the records of a row (seeds, repeats)."""

from __future__ import annotations

import fnmatch
import math
import os
import statistics
from collections import OrderedDict


def row_name(record: dict, by: str = "method") -> str:
    """The row a record belongs to: its method (``by="method"``; the checkpoint's file name when the checkpoint has
    no method) or its checkpoint path (``by="checkpoint"``); `` (random init)`` appended for the baseline."""
    ckpt = record.get("checkpoint") or "-"
    if by == "checkpoint":
        name = ckpt
    elif by == "method":
        name = record.get("method") or os.path.basename(os.path.dirname(ckpt)) or os.path.basename(ckpt)
    else:
        raise ValueError(f"--by: method or checkpoint, got {by!r}")
    return name + (" (random init)" if record.get("variant") == "random-init" else "")


def select_columns(records: list[dict], patterns: list[str] | None = None) -> list[str]:
    """``protocol:metric`` names present in ``records`` (first-seen order) that match one of the glob
    ``patterns`` (matched against ``protocol:metric``; all when none)."""
    cols = OrderedDict()
    for r in records:
        for m in r["metrics"]:
            cols[f"{r['protocol']}:{m}"] = None
    names = list(cols)
    if patterns:
        names = [c for c in names if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    return names


def aggregate(records: list[dict], columns: list[str], by: str = "method") -> OrderedDict:
    """``{row: {column: [values]}}`` over ``records`` (NaN values dropped)."""
    table = OrderedDict()
    for r in records:
        cells = table.setdefault(row_name(r, by), {c: [] for c in columns})
        for c in columns:
            proto, metric = c.split(":", 1)
            v = r["metrics"].get(metric) if r["protocol"] == proto else None
            if v is not None and not math.isnan(v):
                cells[c].append(float(v))
    return table


def mean_std(values: list[float]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation (0 for one value) and count; ``None`` for no values."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def format_cell(values: list[float], digits: int = 4) -> str:
    """``mean ± std`` (``mean`` alone for a single value; ``-`` for none)."""
    s = mean_std(values)
    if s is None:
        return "-"
    mean, std, n = s
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def compare_table(records: list[dict], patterns=None, by: str = "method", fmt: str = "md", digits: int = 4) -> str:
    """The comparison as markdown (``md``) or CSV (``csv``: mean, std and n columns per metric)."""
    columns = select_columns(records, patterns)
    if not columns:
        return "(no records match)"
    table = aggregate(records, columns, by)
    if fmt == "csv":
        head = ["row"] + [f"{c}{s}" for c in columns for s in ("", ":std", ":n")]
        lines = [",".join(head)]
        for name, cells in table.items():
            vals = []
            for c in columns:
                s = mean_std(cells[c])
                vals += ["", "", "0"] if s is None else [f"{s[0]:.6g}", f"{s[1]:.6g}", str(s[2])]
            lines.append(",".join([_csv(name)] + vals))
        return "\n".join(lines)
    if fmt != "md":
        raise ValueError(f"format: md or csv, got {fmt!r}")
    n_max = {name: max((len(v) for v in cells.values()), default=0) for name, cells in table.items()}
    lines = ["| " + " | ".join([by, "n"] + columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for name, cells in table.items():
        lines.append("| " + " | ".join([name, str(n_max[name])] + [format_cell(cells[c], digits) for c in columns]))
        lines[-1] += " |"
    return "\n".join(lines)


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


def list_lines(records: list[dict], limit: int | None = None) -> list[str]:
    """One line per record (newest last): id, time, protocol, row name, seed, short hash, metric count."""
    rows = records[-limit:] if limit else records
    head = f"{'id':>5}  {'time (UTC)':<25} {'protocol':<18} {'method':<28} {'seed':>4}  {'sha256':<12} metrics"
    lines = [head, "-" * len(head)]
    for r in rows:
        sha = (r.get("checkpoint_sha256") or "-")[:12]
        seed = "-" if r.get("seed") is None else str(r["seed"])
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(r["metrics"].items())[:3])
        more = f" (+{len(r['metrics']) - 3})" if len(r["metrics"]) > 3 else ""
        lines.append(
            f"{r['id']:>5}  {r['time']:<25} {r['protocol'][:18]:<18} {row_name(r)[:28]:<28} {seed:>4}  "
            f"{sha:<12} {shown}{more}"
        )
    return lines


def plot_compare(records: list[dict], path: str, patterns=None, by: str = "method") -> str:
    """One bar panel per ``protocol:metric`` (rows as bars, mean with ± std error bars), saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = select_columns(records, patterns)
    if not columns:
        raise ValueError("no records match the metrics to plot")
    table = aggregate(records, columns, by)
    names = list(table)
    ncol = min(3, len(columns))
    nrow = math.ceil(len(columns) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, col in zip(axes.flat, columns):
        stats = [mean_std(table[n][col]) or (math.nan, 0.0, 0) for n in names]
        ax.bar(range(len(names)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3, color="C0")
        ax.set_xticks(range(len(names)), [n[:18] for n in names], rotation=30, ha="right", fontsize=7)
        ax.set_title(col, fontsize=8)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.tight_layout()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
