#!/usr/bin/env bash
# Create (or check) the virtual environment of dcinet-d2: torch, Detectron2 v0.6 (patched source build),
# the pinned requirements, and this project in editable mode.
#
#   bash scripts/setup_env.sh            # venv at $DCINET_VENV (default ~/.cache/dcinet-d2/venv)
#
# The venv lives outside the clone so that CI and fresh clones reuse it; ./.venv links to it.
# A venv is "ready" only when the stamp file written as the very last step matches the current
# requirements and setup scripts; a failed build removes the venv, so nothing half-built looks ready.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${DCINET_VENV:-$HOME/.cache/dcinet-d2/venv}"
PYTHON_BIN="${PYTHON:-python3.11}"
STAMP="$VENV/.dcinet-ready"

die() { echo "error: $*" >&2; exit 1; }

command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "$PYTHON_BIN not found: dcinet-d2 needs Python 3.11 (set PYTHON=/path/to/python3.11)"
PYVER="$("$PYTHON_BIN" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$PYVER" = "3.11" ] || die "$PYTHON_BIN is Python $PYVER: dcinet-d2 needs Python 3.11 (set PYTHON=/path/to/python3.11)"

WANT="$(cat "$ROOT/requirements.txt" "$ROOT"/scripts/setup/* | sha256sum | cut -d' ' -f1)"
VPY="$VENV/bin/python"

link_and_install_project() {
  # Editable install of this clone (a few seconds); redone when the venv points at another clone or
  # setup.py changed (entry points).
  local want_project have_project
  want_project="$ROOT $(sha256sum "$ROOT/setup.py" | cut -d' ' -f1)"
  have_project="$(cat "$VENV/.dcinet-project" 2>/dev/null || true)"
  if [ "$want_project" != "$have_project" ]; then
    rm -f "$VENV/.dcinet-project"
    "$VPY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" 2> >(grep -v '^WARNING: Location' >&2) \
      || die "editable install of $ROOT failed"
    "$VPY" -c 'import dcinet_d2' || die "editable install of $ROOT failed"
    echo "$want_project" > "$VENV/.dcinet-project"
  fi
  ln -sfn "$VENV" "$ROOT/.venv"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VPY" -c 'import torch, detectron2, faiss' 2>/dev/null; then
  link_and_install_project
  echo "environment ready: $VENV"
  exit 0
fi

echo "building environment at $VENV (about 2-3 minutes, about 6 GB)"
rm -rf "$VENV"
cleanup() { rc=$?; if [ $rc -ne 0 ]; then rm -rf "$VENV"; echo "error: environment build failed (exit $rc); removed $VENV" >&2; fi; }
trap cleanup EXIT
mkdir -p "$(dirname "$VENV")"
"$PYTHON_BIN" -m venv "$VENV"
# pip prints a harmless warning per local index folder it does not find; hide those lines only.
if ! "$VPY" -m pip install -q -r "$ROOT/requirements.txt" 2> >(grep -v '^WARNING: Location' >&2); then
  die "could not install $ROOT/requirements.txt from the package registry (is PyPI reachable?)"
fi
PYTHON="$VPY" bash "$ROOT/scripts/setup/install_detectron2.sh" 2> >(grep -v '^WARNING: Location' >&2)
link_and_install_project
"$VPY" -W ignore -c "import dcinet_d2, detectron2, detectron2.export, faiss, pycocotools
from detectron2 import model_zoo
model_zoo.get_config_file('COCO-Detection/faster_rcnn_R_50_C4_1x.yaml')"
echo "$WANT" > "$STAMP"
echo "environment ready: $VENV"
