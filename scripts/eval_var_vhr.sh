#!/usr/bin/env bash
# Issue 8 on the embedded model: calibrate VAR and VHR on the calibration split, then baseline vs PAI vs
# VAR vs VHR vs VAR+VHR on the test split (POPE 400 images x 3 splits, CHAIR 500 images, 512 tokens).
#   bash scripts/eval_var_vhr.sh OUT_DIR          (DEVICE=cpu EXTRA="--limit 4" CALIB_IMAGES=20 for a smoke run)
set -euo pipefail
OUT=${1:?usage: eval_var_vhr.sh OUT_DIR}
CALIB_IMAGES=${CALIB_IMAGES:-200}
source "$(dirname "$0")/embedded_eval.sh"
# VAR: the paper's tau (20) finds no sink on this model (results/var_vhr/README.md), so lower ones too
CALIB_GRID="none,var,var:tau=3,var:tau=1.5,var:tau=1.5:p=0.3,vhr,vhr:alpha=1.5,vhr:alpha=3"
embedded_eval calib pope "$CALIB_GRID" "$OUT/calib/pope" --num-images "$CALIB_IMAGES" --pope-splits adversarial
embedded_eval calib chair "$CALIB_GRID" "$OUT/calib/chair" --num-images "$CALIB_IMAGES" --max-new-tokens 512
eval "$(python scripts/select_config.py "$OUT/calib" --families var vhr --out "$OUT/calib/selected.json")"
TEST_GRID="none,pai,$var,$vhr,$var+$vhr"
embedded_eval test pope "$TEST_GRID" "$OUT/test/pope" --num-images 400
embedded_eval test chair "$TEST_GRID" "$OUT/test/chair" --num-images 500 --max-new-tokens 512
