"""Paper-style tables and plots of records: rows methods (or checkpoints), columns ``protocol:metric`` under one
protocol setting (the config without seed and variant), cells mean ± std over the records of a row (seeds,
repeats). Records of one protocol under different settings never share a column."""

from __future__ import annotations

import fnmatch
import json
import math
import os
import statistics
from collections import OrderedDict
from dataclasses import dataclass


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


#: Config keys that do not change the protocol: the seed tells repeats apart, the variant is the row.
SETTING_IGNORED = ("seed", "random_init")


def setting_hash(record: dict) -> str | None:
    """The protocol setting of a record: :func:`~resultsdb.provenance.config_hash` of its config without
    :data:`SETTING_IGNORED` (``None`` without a config). Records compare only under one setting."""
    from .provenance import config_hash

    cfg = record.get("config")
    if not isinstance(cfg, dict):
        return config_hash(cfg)
    return config_hash({k: v for k, v in cfg.items() if k not in SETTING_IGNORED})


@dataclass(frozen=True)
class Column:
    """One table column: a metric of a protocol under one setting; ``label`` is ``protocol:metric``, or
    ``protocol[<setting 8 hex>]:metric`` when the records hold the protocol under several settings."""

    protocol: str
    setting: str | None
    metric: str
    label: str


def _settings(records: list[dict], patterns) -> OrderedDict:
    """``{protocol: {setting: config}}`` (first-seen order) over the records with a metric matching ``patterns``."""
    out = OrderedDict()
    for r in records:
        if any(_matches(f"{r['protocol']}:{m}", patterns) for m in r["metrics"]):
            out.setdefault(r["protocol"], OrderedDict()).setdefault(setting_hash(r), r.get("config"))
    return out


def _matches(name: str, patterns, label: str | None = None) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (name, label or name))


def select_columns(records: list[dict], patterns: list[str] | None = None) -> list[Column]:
    """The columns of ``records`` (first-seen order) whose ``protocol:metric`` (or label) matches one of the glob
    ``patterns`` (all when none): one per metric and protocol setting (:func:`setting_hash`)."""
    several = {p for p, s in _settings(records, patterns).items() if len(s) > 1}
    cols = OrderedDict()
    for r in records:
        proto, setting = r["protocol"], setting_hash(r)
        tag = f"[{(setting or 'none')[:8]}]" if proto in several else ""
        for m in r["metrics"]:
            col = Column(proto, setting if tag else None, m, f"{proto}{tag}:{m}")
            if _matches(f"{proto}:{m}", patterns, col.label):
                cols[col] = None
    return list(cols)


def setting_notes(records: list[dict], patterns: list[str] | None = None) -> list[str]:
    """One line per protocol that the selected records hold under several settings: its columns are split by
    setting, and what differs between the settings' configs."""
    notes = []
    for proto, settings in _settings(records, patterns).items():
        if len(settings) < 2:
            continue
        cfgs = {h: (c if isinstance(c, dict) else {}) for h, c in settings.items()}
        keys = sorted({k for c in cfgs.values() for k in c if k not in SETTING_IGNORED})
        differ = [
            k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in cfgs.values()}) > 1
        ]
        parts = [
            f"[{(h or 'none')[:8]}] " + (", ".join(f"{k}={_short(c.get(k))}" for k in differ[:6]) or "no config")
            for h, c in cfgs.items()
        ]
        notes.append(
            f"note: {proto} ran under {len(settings)} settings in these records; not comparable, so one column per "
            f"setting: " + "; ".join(parts) + " (--setting PREFIX keeps one)"
        )
    return notes


def _short(value, width: int = 60) -> str:
    """A config value for a note: paths as their last part, JSON otherwise, cut to ``width`` characters."""
    is_path = isinstance(value, str) and value.startswith(os.sep) and " " not in value
    text = os.path.basename(value) if is_path else value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def aggregate(records: list[dict], columns: list[Column], by: str = "method") -> OrderedDict:
    """``{row: {column label: [values]}}`` over ``records`` (NaN values dropped); a record fills a column only under
    the column's protocol and (when the column has one) setting."""
    table = OrderedDict()
    for r in records:
        cells = table.setdefault(row_name(r, by), {c.label: [] for c in columns})
        setting = None
        for c in columns:
            if r["protocol"] != c.protocol:
                continue
            if c.setting is not None:
                setting = setting if setting is not None else setting_hash(r)
                if setting != c.setting:
                    continue
            v = r["metrics"].get(c.metric)
            if v is not None and not math.isnan(v):
                cells[c.label].append(float(v))
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
    """The comparison as markdown (``md``, followed by :func:`setting_notes`) or CSV (``csv``: mean, std and n
    columns per metric; the notes are left to the caller)."""
    cols = select_columns(records, patterns)
    if not cols:
        return "(no records match)"
    table = aggregate(records, cols, by)
    columns = [c.label for c in cols]
    if fmt == "csv":
        head = ["row"] + [f"{c}{s}" for c in columns for s in ("", ":std", ":n")]
        lines = [",".join(_csv(h) for h in head)]
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
    notes = setting_notes(records, patterns)
    return "\n".join(lines + ([""] + notes if notes else []))


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


def list_lines(records: list[dict], limit: int | None = None) -> list[str]:
    """One line per record (newest last): id, time, protocol, setting (:func:`setting_hash`, 8 hex), row name, seed,
    short checkpoint hash, the first metrics."""
    rows = records[-limit:] if limit else records
    head = f"{'id':>5}  {'time (UTC)':<25} {'protocol':<18} {'setting':<8} {'method':<28} {'seed':>4}  "
    head += f"{'sha256':<12} metrics"
    lines = [head, "-" * len(head)]
    for r in rows:
        sha = (r.get("checkpoint_sha256") or "-")[:12]
        seed = "-" if r.get("seed") is None else str(r["seed"])
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(r["metrics"].items())[:3])
        more = f" (+{len(r['metrics']) - 3})" if len(r["metrics"]) > 3 else ""
        lines.append(
            f"{r['id']:>5}  {r['time']:<25} {r['protocol'][:18]:<18} {(setting_hash(r) or '-')[:8]:<8} "
            f"{row_name(r)[:28]:<28} {seed:>4}  "
            f"{sha:<12} {shown}{more}"
        )
    return lines


def plot_compare(records: list[dict], path: str, patterns=None, by: str = "method") -> str:
    """One bar panel per ``protocol:metric`` (rows as bars, mean with ± std error bars), saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = select_columns(records, patterns)
    if not cols:
        raise ValueError("no records match the metrics to plot")
    table = aggregate(records, cols, by)
    columns = [c.label for c in cols]
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
