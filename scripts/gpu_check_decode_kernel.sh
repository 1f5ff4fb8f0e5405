#!/usr/bin/env bash
# One GPU call that validates and measures the fused decoding kernel (lvlm_guard/decode_kernel.py):
# its GPU tests (7B head shapes, eager and compiled), kernel times beside SDPA / the bias path, and
# tokens/s of PAI and VAR with and without it on the LLaVA-1.5-7B shape. Results under OUT.
#   bash scripts/gpu_check_decode_kernel.sh OUT
set -uo pipefail
OUT=${1:?output folder}
mkdir -p "$OUT"
python -m pytest -q -m gpu tests/test_decode_kernel.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 100 python scripts/bench_decode_attention.py --batch-sizes 1,8 --options '[null]' \
    --out "$OUT/bench_decode_attention.json" 2>&1 | tee "$OUT/bench_decode_attention.log"
timeout 450 python scripts/bench_overhead.py --caches dynamic,static --batch-sizes 1,8 \
    --modes plain pai pai@kernel var var@kernel --skip-prefill --new-tokens 64 --reps 3 \
    --out "$OUT/bench_kernel.json" 2>&1 | grep -v Warning | tee "$OUT/bench_kernel.log"
