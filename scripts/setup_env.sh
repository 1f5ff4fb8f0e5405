#!/usr/bin/env bash
# Create ./.venv once (torch 2.13 + lvlm_guard with its dev and eval extras); later calls reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import lvlm_guard, evals, pytest, pycocotools" 2>/dev/null; then
    # torch first: on the project's machines 2.13.0 is a local CPU build; elsewhere pip fetches it
    .venv/bin/pip install -q "torch==2.13.0"
    .venv/bin/pip install -q -e ".[dev,eval]"
fi
