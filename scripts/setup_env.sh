#!/usr/bin/env bash
# Create ./.venv once (torch 2.13 + lvlm_guard with its dev and eval extras); later calls reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import lvlm_guard, evals, pytest, pycocotools, streamlit, selenium, nltk" 2>/dev/null; then
    # torch first: on the project's machines 2.13.0 is a local CPU build; elsewhere pip fetches it
    .venv/bin/pip install -q "torch==2.13.0"
    .venv/bin/pip install -q -e ".[dev,eval,app]"
fi
# CHAIR's NLTK data (punkt, the perceptron tagger, WordNet): nltk also searches <venv>/nltk_data.
# Offline, link the workplace's copy beside the repo there; otherwise download it (needs internet).
if ! .venv/bin/python -c "import sys; from evals.chair.nlp import missing_resources; sys.exit(bool(missing_resources()))" 2>/dev/null; then
    if [ -d ../shared/data/nltk_data ] && [ ! -e .venv/nltk_data ]; then
        ln -s "$(cd ../shared/data/nltk_data && pwd)" .venv/nltk_data
    else
        .venv/bin/python -m nltk.downloader -q -d .venv/nltk_data punkt_tab averaged_perceptron_tagger_eng wordnet \
            || echo "setup_env: could not fetch NLTK data; CHAIR will name what is missing" >&2
    fi
fi
# Triton: the fused decoding kernel's tests run it on CPU through Triton's interpreter (CUDA builds
# of torch bring their own Triton; where no wheel exists the tests skip)
if ! .venv/bin/python -c "import triton" 2>/dev/null; then
    .venv/bin/pip install -q "triton>=3.2" || echo "setup_env: no Triton wheel here; the kernel tests will skip" >&2
fi
# the app's browser test (tests/test_app_browser.py) drives Debian's chromium through chromedriver
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
            || echo "setup_env: apt-get could not install chromium; the browser test will skip" >&2
    else
        echo "setup_env: chromium/chromium-driver missing and not root; the browser test will skip" >&2
    fi
fi
