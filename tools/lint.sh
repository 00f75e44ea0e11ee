#!/usr/bin/env bash
# Lint and format check with ruff (settings in pyproject.toml). `tools/lint.sh --fix` fixes and formats instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUFF="$ROOT/.venv/bin/ruff"
[ -x "$RUFF" ] || "$ROOT/tools/install.sh"
cd "$ROOT"
if [ "${1:-}" = "--fix" ]; then
  "$RUFF" check --fix .
  exec "$RUFF" format .
fi
"$RUFF" check .
"$RUFF" format --check .
