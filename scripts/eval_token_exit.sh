#!/usr/bin/env bash
# POPE (3 splits) and CHAIR on tiny-coco vs visual-token exit layer, then the plot.
#   scripts/eval_token_exit.sh OUT [extra eval args, e.g. --opt device=cuda]
# Smoke on CPU:  NUM_POPE=4 NUM_CHAIR=4 LIMIT=4 scripts/eval_token_exit.sh /tmp/exit_smoke
set -euo pipefail
OUT=${1:?output folder}
shift
NUM_POPE=${NUM_POPE:-400}
NUM_CHAIR=${NUM_CHAIR:-500}
BATCH=${BATCH:-32}
LIMIT_ARGS=()
[[ -n "${LIMIT:-}" ]] && LIMIT_ARGS=(--limit "$LIMIT")
ROOT=$(python -c "from lvlm_guard.world import default_world_root, ensure_world; ensure_world('test'); print(default_world_root())")
LAYERS=$(python -c "import lvlm_guard as lg; m, _ = lg.load('tiny-coco'); print(m.config.text_config.num_hidden_layers)")
GRID="none,exit:router=tiny-coco"
for ((l = 0; l < LAYERS - 1; l++)); do GRID="$GRID,exit:layer=$l"; done
lvlm-guard eval pope --model tiny-coco --grid "$GRID" --coco-root "$ROOT" --split test \
    --num-images "$NUM_POPE" --batch-size "$BATCH" --out "$OUT/pope" "${LIMIT_ARGS[@]}" "$@"
lvlm-guard eval chair --model tiny-coco --grid "$GRID" --coco-root "$ROOT" --split test \
    --num-images "$NUM_CHAIR" --batch-size "$BATCH" --max-new-tokens 512 --out "$OUT/chair" "${LIMIT_ARGS[@]}" "$@"
python scripts/plot_token_exit.py "$OUT" --num-layers "$LAYERS"
