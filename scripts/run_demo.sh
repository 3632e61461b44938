#!/usr/bin/env bash
# The main job on the built-in synthetic data (the README's first command): set up the environment if
# needed, generate a synthetic CUHK-SYSU-layout dataset, train a small DC-I-Net on the CPU, and evaluate
# it (person-search mAP / top-1 beside detection AP), then index the gallery with `dcinet-search index` and
# search it for one test identity with `dcinet-search query --vis`. Everything goes under $OUT (default
# output/demo); the search picture is $OUT/search.png.
#   bash scripts/run_demo.sh [extra config overrides, e.g. SOLVER.MAX_ITER 100]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-output/demo}"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export DCINET_DATASETS="${DCINET_DATASETS:-$ROOT/datasets}"
if [ ! -f "$DCINET_DATASETS/synthetic_cuhk_sysu/annotation/Images.mat" ]; then
  .venv/bin/python -m dcinet_d2.data.synthetic --out "$DCINET_DATASETS/synthetic_cuhk_sysu" --format cuhk_sysu
fi
.venv/bin/python scripts/train_net.py --config-file configs/cpu/dcinet_mnv2_synth.yaml \
  OUTPUT_DIR "$OUT" MODEL.DEVICE cpu "$@"
# Index the gallery split with the model just trained (an index of an earlier model is replaced), then
# search it for one test identity.
rm -rf "$OUT/gallery_index"
.venv/bin/dcinet-search index --config-file "$OUT/config.yaml" --weights "$OUT/model_final.pth" \
  --dataset synth_cuhk_sysu_gallery --out "$OUT/gallery_index" --batch-size 4
.venv/bin/python scripts/demo_search.py --index "$OUT/gallery_index" --query-set synth_cuhk_sysu_query \
  --gallery-set synth_cuhk_sysu_gallery --vis "$OUT/search.png" --top-k 5
