#!/usr/bin/env bash
# Create (or check) the virtual environment of dcinet-d2: torch, Detectron2 v0.6 (patched source build),
# the pinned requirements, and this project in editable mode.
#
#   bash scripts/setup_env.sh            # venv at $DCINET_VENV (default ~/.cache/dcinet-d2/venv)
#
# The heavy venv lives outside the clone so that CI and fresh clones reuse it; ./.venv is the clone's own
# thin venv on top of it, holding only this clone's editable install (see link_and_install_project).
# A venv is "ready" only when the stamp file written as the very last step matches the current
# requirements and setup scripts; a failed build removes the venv, so nothing half-built looks ready.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"  # python -c puts the working folder first on sys.path: make it this clone
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
  # ./.venv is this clone's own small venv layered on the shared one: its site-packages holds the editable
  # install of THIS clone (and its console scripts), then a .pth adds the shared site-packages. So every
  # entry point started from a clone (.venv/bin/python, dcinet-eval, scripts, test subprocesses) imports
  # that clone's dcinet_d2, whichever clone built the shared environment. The shared venv never holds the
  # project (an editable install there would serve one clone's code to all of them).
  local local_venv="$ROOT/.venv" lpy="$ROOT/.venv/bin/python" shared_site want_project have_project
  shared_site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  if "$VPY" -m pip show -q dcinet_d2 >/dev/null 2>&1; then  # left by an earlier version of this script
    "$VPY" -m pip uninstall -q -y dcinet_d2 || die "could not remove dcinet_d2 from the shared venv $VENV"
  fi
  want_project="$VENV $(sha256sum "$ROOT/setup.py" | cut -d' ' -f1)"
  have_project="$(cat "$local_venv/.dcinet-project" 2>/dev/null || true)"
  if [ -L "$local_venv" ] || [ "$want_project" != "$have_project" ] || ! [ -x "$lpy" ]; then
    rm -rf "$local_venv"
    "$PYTHON_BIN" -m venv --without-pip "$local_venv" || die "could not create $local_venv"
    local_site="$("$lpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # addsitedir (not a bare path line) so that the shared site-packages' own .pth files are processed too.
    echo "import site; site.addsitedir('$shared_site')" > "$local_site/zz_dcinet_shared_env.pth"
    "$lpy" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" 2> >(grep -v '^WARNING: Location' >&2) \
      || die "editable install of $ROOT into $local_venv failed"
    echo "$want_project" > "$local_venv/.dcinet-project"
  fi
  "$lpy" -c 'import dcinet_d2, os, sys
root = os.path.realpath(sys.argv[1])
assert os.path.realpath(dcinet_d2.__file__).startswith(root + os.sep), dcinet_d2.__file__' "$ROOT" \
    || die "$local_venv does not import this clone's dcinet_d2 ($ROOT); remove $local_venv and rerun"
}

install_lint_tools() {
  # The pinned linter (requirements-lint.txt), added to the ready shared venv when its version differs:
  # one wheel, never a rebuild of the heavy environment.
  local want have
  want="$(sed -n 's/^ruff==\([^ #]*\).*/\1/p' "$ROOT/requirements-lint.txt")"
  have="$("$VENV/bin/ruff" --version 2>/dev/null | cut -d' ' -f2 || true)"
  if [ "$want" != "$have" ]; then
    "$VPY" -m pip install -q --no-deps -r "$ROOT/requirements-lint.txt" 2> >(grep -v '^WARNING: Location' >&2) \
      || die "could not install $ROOT/requirements-lint.txt from the package registry (is PyPI reachable?)"
  fi
}

install_serve_tools() {
  # The review page's pinned packages (requirements-serve.txt: FastAPI, uvicorn, and for its tests httpx and
  # Selenium), added to the ready shared venv like the linter; a stamp holds the file's hash.
  local want have
  want="$(sha256sum "$ROOT/requirements-serve.txt" | cut -d' ' -f1)"
  have="$(cat "$VENV/.dcinet-serve" 2>/dev/null || true)"
  if [ "$want" != "$have" ]; then
    "$VPY" -m pip install -q --no-deps -r "$ROOT/requirements-serve.txt" 2> >(grep -v '^WARNING: Location' >&2) \
      || die "could not install $ROOT/requirements-serve.txt from the package registry (is PyPI reachable?)"
    echo "$want" > "$VENV/.dcinet-serve"
  fi
}

install_browser() {
  # The browser test drives Debian's headless Chromium through its chromedriver; installed when missing and
  # this runs as root (CI), otherwise named (the test then skips, saying the same).
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver (Debian packages) for the browser test"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
      >/dev/null || die "could not install chromium chromium-driver with apt-get"
  else
    echo "note: the browser test needs Chromium and its driver: apt-get install chromium chromium-driver" >&2
  fi
}

# One build at a time per shared venv (two clones set up at once); the per-clone part needs no lock but is
# cheap, so it runs under it too.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VPY" -c 'import torch, detectron2, faiss' 2>/dev/null; then
  link_and_install_project
  install_lint_tools
  install_serve_tools
  install_browser
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
PYTHON="$VPY" bash "$ROOT/scripts/setup/install_pretrained.sh" 2> >(grep -v '^WARNING: Location' >&2)
link_and_install_project
"$ROOT/.venv/bin/python" -W ignore -c "import dcinet_d2, detectron2, detectron2.export, faiss, pycocotools
from detectron2 import model_zoo
model_zoo.get_config_file('COCO-Detection/faster_rcnn_R_50_C4_1x.yaml')"
echo "$WANT" > "$STAMP"
install_lint_tools
install_serve_tools
install_browser
echo "environment ready: $VENV"
