#!/usr/bin/env bash
# Run the whole test suite (installs the environment first; seconds when it is already installed).
#   tools/test.sh                 # everything
#   tools/test.sh tests/pretrain/models -k field   # any pytest arguments
#   tools/test.sh -m "not slow"                 # the quick part (no end-to-end runs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/install.sh"
cd "$ROOT"
if [ "${LINT:-1}" != 0 ]; then  # ruff check + format --check first (LINT=0 skips; tools/lint.sh --fix repairs)
  "$ROOT/tools/lint.sh"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
