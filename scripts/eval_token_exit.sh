#!/usr/bin/env bash
# POPE (3 splits) and CHAIR on tiny-coco vs visual-token exit layer, then the plot.
#   bash scripts/eval_token_exit.sh OUT              (GPU; DEVICE=cpu for CPU)
# Smoke on CPU:  DEVICE=cpu NUM_POPE=4 NUM_CHAIR=4 EXTRA="--limit 4" bash scripts/eval_token_exit.sh /tmp/exit_smoke
set -euo pipefail
OUT=${1:?output folder}
NUM_POPE=${NUM_POPE:-400}
NUM_CHAIR=${NUM_CHAIR:-500}
source "$(dirname "$0")/embedded_eval.sh"
LAYERS=$(python -c "import lvlm_guard as lg; m, _ = lg.load('tiny-coco'); print(m.config.text_config.num_hidden_layers)")
GRID="none,exit:router=tiny-coco"
for ((l = 0; l < LAYERS - 1; l++)); do GRID="$GRID,exit:layer=$l"; done
embedded_eval test pope "$GRID" "$OUT/pope" --num-images "$NUM_POPE"
embedded_eval test chair "$GRID" "$OUT/chair" --num-images "$NUM_CHAIR" --max-new-tokens 512
python scripts/plot_token_exit.py "$OUT" --num-layers "$LAYERS"
