# Sourced by the per-method eval scripts: `embedded_eval SPLIT TASK GRID OUT [extra args]` runs one
# POPE/CHAIR grid on the embedded model and its synthetic world. Settings from the environment:
# DEVICE (default cuda), BATCH (64), EXTRA (e.g. "--limit 4" for a smoke run).
embedded_eval() {
  local root
  root=$(python -c "from lvlm_guard.embedded.world.coco_format import ensure_world; print(ensure_world('$1'))")
  python -m lvlm_guard.cli eval "$2" --model tiny-coco --grid "$3" --coco-root "$root" --split "$1" \
    --batch-size "${BATCH:-64}" --opt device="${DEVICE:-cuda}" --no-progress ${EXTRA:-} --out "$4" "${@:5}"
}
