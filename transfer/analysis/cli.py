"""What the analysis tools (``tools/analyze_attention.py``, ``probe_dense.py``, ``probe_position.py``) share: the
converter's read options and how a command-line run reports bad input. Imports nothing heavy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def add_read_options(p: argparse.ArgumentParser) -> None:
    """``--src-format``, ``--num-heads``, ``--unsafe-load``: how :mod:`transfer.convert` reads a foreign checkpoint."""
    p.add_argument("--src-format", default="auto", help="converter source format (auto, ours, dinov2, timm, mae)")
    p.add_argument("--num-heads", type=int, help="heads, for checkpoints whose metadata lacks them")
    p.add_argument("--unsafe-load", action="store_true", help="allow full unpickling (trusted files only)")


def add_output_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """``--out`` (the output folder) and ``--quiet`` (no progress bars: ``progress=False``)."""
    p.add_argument("--out", default=default_out, help="output folder")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")


def run_tool(prog: str, report: Callable[..., list[str]], parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv``, print the lines of ``report(**vars(args))`` and return 0; on bad input (a missing file, a
    ``ValueError`` such as :class:`~transfer.analysis.backbones.AdapterError`) print ``<prog>: error: ...`` and
    return 2. Every option's destination is a keyword argument of ``report``."""
    args = parser.parse_args(argv)
    try:
        lines = report(**vars(args))
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
