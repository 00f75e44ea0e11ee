#!/usr/bin/env python
"""The results database on the command line: list records, compare methods, plot (docs/evaluation.md).

The database is ``--db``, else ``$SSLVIT_RESULTS_DB``, else ``outputs/results.sqlite``. ``compare`` prints rows
(methods, or checkpoints with ``--by checkpoint``) x columns (``protocol:metric``), each cell mean ± std over the
row's records (seeds, repeats); ``--metrics`` takes glob patterns on ``protocol:metric``. A column holds one
protocol setting only (the protocol's config without seed and variant): a protocol recorded under several settings
gets one column per setting, ``protocol[<8 hex>]:metric``, and a note says what differs; ``--setting PREFIX``
keeps the records of one setting (``list`` shows them).

Examples::

    python tools/results.py list --last 20
    python tools/results.py compare --protocol probe_dense --metrics 'probe_dense:nn*miou'
    python tools/results.py compare --format csv > table.csv
    python tools/results.py plot --metrics 'cls_knn:*' --out outputs/results_cls_knn.png
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", help="database file (default: $SSLVIT_RESULTS_DB or outputs/results.sqlite)")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("list", "compare", "plot"):
        s = sub.add_parser(name)
        s.add_argument("--protocol", help="only records of this protocol")
        s.add_argument("--method", help="only records of this method")
        s.add_argument("--under", help="only records whose output folder is inside this folder")
        s.add_argument("--setting", help="only records whose protocol setting hash starts with this (see list)")
        if name == "list":
            s.add_argument("--last", type=int, help="only the newest N records")
            continue
        s.add_argument("--metrics", nargs="+", help="glob patterns on protocol:metric (default: all)")
        s.add_argument("--by", choices=("method", "checkpoint"), default="method", help="what a row is")
        if name == "compare":
            s.add_argument("--format", choices=("md", "csv"), default="md")
            s.add_argument("--digits", type=int, default=4)
        else:
            s.add_argument("--out", default="outputs/results_compare.png", help="PNG path")
    return p


def main(argv=None) -> int:
    from resultsdb.db import ResultsDB, ResultsDBError, default_db_path
    from resultsdb.table import compare_table, list_lines, plot_compare, setting_hash, setting_notes

    args = build_parser().parse_args(argv)
    path = default_db_path(args.db)
    if path is None:
        print("results: error: the results database is disabled ($SSLVIT_RESULTS_DB)", file=sys.stderr)
        return 2
    try:
        with ResultsDB(path, create=False) as db:
            records = db.records(args.protocol, args.method)
    except ResultsDBError as e:
        print(f"results: error: {e}", file=sys.stderr)
        return 2
    if args.under:
        root = os.path.abspath(args.under)
        records = [
            r
            for r in records
            if (r.get("output_dir") or "") + os.sep == root + os.sep
            or (r.get("output_dir") or "").startswith(root + os.sep)
        ]
    if args.setting:
        records = [r for r in records if (setting_hash(r) or "").startswith(args.setting)]
    if args.command == "list":
        print("\n".join(list_lines(records, args.last)))
    elif args.command == "compare":
        print(compare_table(records, args.metrics, args.by, args.format, args.digits))
        if args.format == "csv":
            for note in setting_notes(records, args.metrics):
                print(note, file=sys.stderr)
    else:
        try:
            print(f"wrote {plot_compare(records, args.out, args.metrics, args.by)}")
        except ValueError as e:
            print(f"results: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
