#!/usr/bin/env bash
# Issue 4 on GPUs: the full POPE (400 test images, three splits) + CHAIR (500 images, 512 new tokens)
# protocol on the embedded model, baseline and PAI, once on one GPU and once with `accelerate launch`
# on two, then an item-by-item comparison of the merged records. float32 so that the two runs'
# different batch compositions cannot flip a greedy token through bf16 rounding.
#   bash scripts/gpu_eval_protocol.sh OUT_DIR        (EXTRA="--limit 8" DEVICE=cpu PROCS=2 for a smoke run)
set -euo pipefail
OUT=${1:?usage: gpu_eval_protocol.sh OUT_DIR}
DEVICE=${DEVICE:-cuda}
PROCS=${PROCS:-2}
EXTRA=${EXTRA:-}
ROOT=$(python -c "from lvlm_guard.embedded.world.coco_format import ensure_world; print(ensure_world('test'))")
common=(--model tiny-coco --grid none,pai --coco-root "$ROOT" --split test --batch-size 64 --opt dtype=float32 --no-progress $EXTRA)
pope=(pope --num-images 400)
chair=(chair --num-images 500 --max-new-tokens 512)
for task in pope chair; do
  declare -n args=$task
  start=$(date +%s)
  CUDA_VISIBLE_DEVICES=0 python -m lvlm_guard.cli eval "${args[@]}" "${common[@]}" --opt device=$DEVICE --out "$OUT/one_gpu/$task"
  echo "one_gpu $task wall_s $(( $(date +%s) - start ))"
  start=$(date +%s)
  if [ "$DEVICE" = cpu ]; then  # accelerate launch --cpu starts one process; torchrun starts several
    launch=(env ACCELERATE_USE_CPU=1 torchrun --nproc_per_node "$PROCS")
  else
    launch=(accelerate launch --multi_gpu --num_processes "$PROCS" --num_machines 1 --mixed_precision no --dynamo_backend no)
  fi
  "${launch[@]}" -m lvlm_guard.cli eval "${args[@]}" "${common[@]}" --out "$OUT/two_gpu/$task"
  echo "two_gpu $task wall_s $(( $(date +%s) - start ))"
  python scripts/compare_eval_runs.py "$OUT/one_gpu/$task" "$OUT/two_gpu/$task" --out "$OUT/compare_$task.json"
done
