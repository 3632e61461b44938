#!/usr/bin/env bash
# Set up the environment if needed, lint (ruff, configured in pyproject.toml), then run the test suite (the
# README's second command; CI runs this).
#   bash scripts/run_tests.sh [pytest args]      e.g. -m "not slow" for the fast subset
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
.venv/bin/python -m ruff check --no-cache . || { echo "error: ruff check failed (see above; .venv/bin/python -m ruff check --fix . fixes some)" >&2; exit 1; }
exec .venv/bin/python -m pytest "$@"
