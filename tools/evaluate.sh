#!/usr/bin/env bash
# The probe suite on one checkpoint (docs/evaluation.md):
#
#   tools/evaluate.sh CKPT [--suite quick|full] [--random-init] [--seeds S ...] [--out DIR] [--data data/toy]
#
# Runs the CLS k-NN, the dense patch probes (1-NN, linear, top-m variance removal), the position accuracy, the MAXA
# adapters (boundaries, distance, instances, semantics, depth), the LocalRep probes (retrieval under shift, rotation,
# scale, blur and noise; tracking; global context) and the attention statistics on the toy sets (each as its own
# tool; one failing is reported, the others still run),
# writes summary.md, summary.csv and summary.png under the output folder (default outputs/eval/<name>_<suite>)
# and records every number in the results database ($SSLVIT_RESULTS_DB, default outputs/results.sqlite).
# Compare checkpoints afterwards with tools/results.py compare. The quick suite takes a few minutes on a CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m transfer.analysis.suite "$@"
