#!/usr/bin/env bash
# Run the whole test suite (installs the environment first; seconds when it is already installed).
#   tools/test.sh                 # everything
#   tools/test.sh tests/test_core.py -k field   # any pytest arguments
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/install.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
