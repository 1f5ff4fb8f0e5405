#!/usr/bin/env bash
# The speed measurements of issues 2 and 8 on the LLaVA-1.5-7B shape, in two device calls of
# under 10 minutes each (results and logs under OUT):
#   bash scripts/gpu_speed_round.sh static OUT   # the kernel's GPU tests and knobs; static cache + compile, b1 and b8
#   bash scripts/gpu_speed_round.sh dynamic OUT  # dynamic cache b1 and b8, prefill latency, a profile of static b8
#   bash scripts/gpu_speed_round.sh launch OUT   # the kernel's GPU tests; dynamic-cache PAI with the direct
#                                                # Triton launch and without; prefill latency; decoding-step
#                                                # profile of static b8 (plain, VAR, VHR)
#   bash scripts/gpu_speed_round.sh diagnose OUT # host cost per eager call (SDPA, kernel with/without the
#                                                # direct launch); static b8 VAR/VHR with recompile and
#                                                # CUDA-graph logs (the wall time beyond their GPU time)
# 256 new tokens, as the brief's anchor (plain HF generate ~26 tok/s, static + compile ~117 on an H100).
set -uo pipefail
PART=${1:?static or dynamic}
OUT=${2:?output folder}
mkdir -p "$OUT"
MODES="plain pai var vhr"
if [ "$PART" = static ]; then
    timeout 120 python -m pytest -q -m gpu tests/test_decode_kernel.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.log"
    timeout 50 python scripts/sweep_decode_kernel.py --blocks 128,256 --targets 0,256,512 --warps 4 --dot 0,1 \
        --out "$OUT/sweep.json" 2>&1 | grep -E "sdpa|best" | tee "$OUT/sweep.log"
    timeout 400 python scripts/bench_overhead.py --caches static --batch-sizes 8,1 --modes $MODES \
        --skip-prefill --new-tokens 256 --reps 3 --out "$OUT/bench_static.json" 2>&1 \
        | grep -v Warning | tee "$OUT/bench_static.log"
elif [ "$PART" = launch ]; then
    timeout 130 python -m pytest -q -m gpu tests/test_decode_kernel.py 2>&1 | tail -8 | tee "$OUT/gpu_tests.log"
    timeout 250 python scripts/bench_overhead.py --caches dynamic --batch-sizes 1,8 --modes plain pai pai@jitlaunch \
        --prefill-modes $MODES --new-tokens 256 --warm-tokens 32 --reps 3 --out "$OUT/bench_dynamic_pai.json" 2>&1 \
        | grep -v Warning | tee "$OUT/bench_dynamic_pai.log"
    timeout 190 python scripts/profile_decode.py --cache static --batch 8 --modes plain var vhr --new-tokens 32 \
        --out "$OUT/profile_static_b8.json" 2>&1 | grep -v Warning | tee "$OUT/profile_static_b8.log"
elif [ "$PART" = diagnose ]; then
    timeout 200 python scripts/bench_decode_attention.py --batch-sizes 1,8 --options '[null]' \
        --only sdpa triton_pai triton_var --out "$OUT/host_cost.json" 2>&1 | grep -v Warning | tee "$OUT/host_cost.log"
    TORCH_LOGS=recompiles,cudagraphs timeout 350 python scripts/bench_overhead.py --caches static --batch-sizes 8 \
        --modes plain var vhr --skip-prefill --new-tokens 256 --reps 3 --out "$OUT/bench_static_b8.json" 2>&1 \
        | grep -v Warning | tail -200 > "$OUT/bench_static_b8.log"
else
    timeout 300 python scripts/bench_overhead.py --caches dynamic --batch-sizes 1,8 --modes $MODES \
        --prefill-modes $MODES --new-tokens 256 --warm-tokens 32 --reps 3 --out "$OUT/bench_dynamic.json" 2>&1 \
        | grep -v Warning | tee "$OUT/bench_dynamic.log"
    timeout 220 python scripts/profile_decode.py --cache static --batch 8 --modes $MODES --new-tokens 32 \
        --out "$OUT/profile_static_b8.json" 2>&1 | grep -v Warning | tee "$OUT/profile_static_b8.log"
fi
