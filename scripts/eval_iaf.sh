#!/usr/bin/env bash
# NOTE: this produced results/iaf/ for the invented IAF that PAINT replaced; its grid names
# settings (spatial_ratio) PAINT does not have, so it no longer runs as is.
# Issue 5 part 1 on the embedded model: calibrate IAF on the calibration split (rule in
# scripts/select_config.py: lowest CHAIR_I + (100 - POPE adversarial F1)), then baseline vs PAI vs IAF vs
# IAF+PAI on the test split (POPE 400 images x 3 splits, CHAIR 500 images, 512 tokens).
#   bash scripts/eval_iaf.sh OUT_DIR          (DEVICE=cpu EXTRA="--limit 4" CALIB_IMAGES=20 for a smoke run)
set -euo pipefail
OUT=${1:?usage: eval_iaf.sh OUT_DIR}
CALIB_IMAGES=${CALIB_IMAGES:-200}
source "$(dirname "$0")/embedded_eval.sh"
# our defaults first (ties keep the first), then the gain and the two streams' shares
CALIB_GRID="none,iaf,iaf:alpha=0.2,iaf:alpha=1,iaf:alpha=2,iaf:local_ratio=0.25:spatial_ratio=0.25,iaf:local_ratio=0:spatial_ratio=0.2,iaf:local_ratio=0.2:spatial_ratio=0"
embedded_eval calib pope "$CALIB_GRID" "$OUT/calib/pope" --num-images "$CALIB_IMAGES" --pope-splits adversarial
embedded_eval calib chair "$CALIB_GRID" "$OUT/calib/chair" --num-images "$CALIB_IMAGES" --max-new-tokens 512
eval "$(python scripts/select_config.py "$OUT/calib" --families iaf --out "$OUT/calib/selected.json")"
TEST_GRID="none,pai,$iaf,$iaf+pai"
embedded_eval test pope "$TEST_GRID" "$OUT/test/pope" --num-images 400
embedded_eval test chair "$TEST_GRID" "$OUT/test/chair" --num-images 500 --max-new-tokens 512
