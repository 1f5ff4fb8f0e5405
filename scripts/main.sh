#!/usr/bin/env bash
# The main job (README): set up .venv if needed, then baseline vs every guard, POPE + CHAIR, on the
# embedded default model and its synthetic COCO world (offline, CPU). Extra arguments go to `lvlm-guard main`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/lvlm-guard main "$@"
