#!/usr/bin/env bash
# Build Detectron2 v0.6 from the hash-pinned pb1-detectron2==0.6 source package, patched by
# patch_detectron2.py, into the Python given as $PYTHON (which must already have torch).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:?set PYTHON to the interpreter of the target environment}"
SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
echo "pb1-detectron2==0.6 --hash=sha256:$SHA256" > "$WORK/req.txt"
# Its setup.py imports torch even to read metadata: no build isolation, also for the download.
if ! "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: --require-hashes \
        -r "$WORK/req.txt" -d "$WORK" ; then
  echo "error: could not download pb1-detectron2==0.6 (sha256 $SHA256) from the package registry" >&2
  exit 1
fi
tar xzf "$WORK/pb1-detectron2-0.6.tar.gz" -C "$WORK"
"$PY" "$HERE/patch_detectron2.py" "$WORK/pb1-detectron2-0.6"
env -u FORCE_CUDA "$PY" -m pip install -q --no-deps --no-build-isolation "$WORK/pb1-detectron2-0.6"
