#!/usr/bin/env bash
# The project's test command (README and CI): set up .venv if needed, then run the default suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
