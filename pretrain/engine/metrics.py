"""Progress on rank 0: a console line with iterations/s and ETA, JSON-lines metrics, TensorBoard scalars."""

from __future__ import annotations

import json
import logging
import os
import time

logger = logging.getLogger("pretrain")


def format_seconds(s: float) -> str:
    s = int(max(0, s))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def drop_rows_from(path: str, iteration: int) -> int:
    """Remove the rows of a ``metrics.jsonl`` at or after ``iteration`` (a resumed run logs them again); returns
    how many were removed. The file is rewritten atomically; a missing file is left missing."""
    if iteration <= 0 or not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = [line for line in lines if _row_iteration(line) < iteration]
    if len(kept) < len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return len(lines) - len(kept)


def _row_iteration(line: str) -> float:
    try:
        return float(json.loads(line).get("iteration", -1))
    except (ValueError, AttributeError):
        return float("inf")  # a torn last line from a kill: dropped


class MetricWriter:
    """Writes ``metrics.jsonl`` (one object per logged iteration) and TensorBoard scalars under ``output_dir``."""

    def __init__(self, output_dir: str, total_iterations: int, start_iteration: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.total, self.start = total_iterations, start_iteration
        self.t0 = time.perf_counter()
        self.last_t, self.last_it = self.t0, start_iteration
        self.tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "metrics.jsonl")
        drop_rows_from(path, start_iteration)
        self.jsonl = open(path, "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at or after the resumed iteration (logged before the interruption) are dropped
            self.tb = SummaryWriter(os.path.join(output_dir, "tb"), purge_step=start_iteration or None)
        except ImportError:  # tensorboard is optional on GPU nodes that only carry torch/timm
            logger.warning("tensorboard not installed: TensorBoard logging disabled (metrics.jsonl still written)")

    def write(self, iteration: int, scalars: dict, images_per_iteration: int) -> str:
        now = time.perf_counter()
        done = iteration + 1
        its = (done - self.last_it) / max(now - self.last_t, 1e-9)
        self.last_t, self.last_it = now, done
        avg = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / max(avg, 1e-9)
        scalars = dict(scalars, it_per_s=its, images_per_s=its * images_per_iteration)
        line = f"[{done}/{self.total}] {its:.2f} it/s ETA {format_seconds(eta)} | " + " ".join(
            f"{k} {v:.4g}"
            for k, v in scalars.items()
            if k not in ("it_per_s", "images_per_s") and not k.startswith("grad_norm_")
        )
        if self.enabled:
            self.jsonl.write(json.dumps({"iteration": iteration, **scalars}) + "\n")
            if self.tb is not None:
                for k, v in scalars.items():
                    self.tb.add_scalar(k, v, iteration)
        return line

    def log_event(self, iteration: int, **fields) -> None:
        if self.enabled:
            self.jsonl.write(json.dumps({"iteration": iteration, **fields}) + "\n")

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()
