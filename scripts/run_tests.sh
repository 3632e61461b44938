#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite (the README's second command; CI runs this).
#   bash scripts/run_tests.sh [pytest args]      e.g. -m "not slow" for the fast subset
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
