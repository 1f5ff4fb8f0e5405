"""Host time of eager (dynamic-cache) decoding on the GPU, by guard mode: per step and per
attention call.

Why: eager decoding of the 7B shape is bound by host time, and the H200's shared host stalls
whole runs (decoding steps of one mode take ~23 ms in some runs and ~40 ms in others), so
tokens/s of a few runs cannot resolve a 5% difference. Host time inside the attention function
is what a guard changes; it is timed call by call (`perf_counter_ns` around the registered
function, decoding steps only), and medians over thousands of calls hold still through stalls.
Reported per mode: median step (`StepClock`), median host microseconds per attention call, and
the lower quartile of both (the unstalled state).

    python scripts/host_cost_eager.py --modes plain pai var vhr --out host_cost_eager.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from bench_overhead import build_model, make_inputs, run_generate

from evals.speed import AttentionTimer, StepClock, quartile


def measure(model, inputs, mode: str, new_tokens: int) -> tuple[list[float], list[int], float]:
    """One generate: its decoding-step intervals (s), attention-call host times (ns) and the
    time to its first token (s; prefill, with VHR's image-free branch)."""
    clock = StepClock()
    with AttentionTimer() as timer:
        run_generate(model, inputs, mode, new_tokens, "dynamic", clock)
    return clock.intervals(), timer.calls_ns, clock.first_token()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--modes", nargs="+", default=["plain", "guard_off", "pai", "var", "vhr"])
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="4-layer model, to check the script quickly")
    args = parser.parse_args()
    model = build_model("cuda", smoke=args.smoke)
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "gpu": torch.cuda.get_device_name(0), "rows": []}
    for batch in args.batch_sizes:
        inputs = make_inputs(batch, "cuda")
        steps = {m: [] for m in args.modes}
        calls = {m: [] for m in args.modes}
        firsts = {m: [] for m in args.modes}
        for mode in args.modes:  # warm-up (Triton compiles, caches fill)
            measure(model, inputs, mode, 16)
        for _ in range(args.reps):  # interleaved: a stall hits every mode alike
            for mode in args.modes:
                s, c, first = measure(model, inputs, mode, args.new_tokens)
                steps[mode] += s
                calls[mode] += c
                firsts[mode].append(first)
        for mode in args.modes:
            row = {
                "batch": batch,
                "mode": mode,
                "step_ms_median": statistics.median(steps[mode]) * 1e3,
                "step_ms_lower_quartile": quartile(steps[mode]) * 1e3,
                "attention_call_us_median": statistics.median(calls[mode]) / 1e3,
                "attention_call_us_lower_quartile": quartile(calls[mode]) / 1e3,
                "attention_calls": len(calls[mode]),
                "first_token_ms_median": statistics.median(firsts[mode]) * 1e3,
            }
            results["rows"].append(row)
            print(
                f"b{batch} {mode:10s} step {row['step_ms_median']:6.2f} ms (q1 {row['step_ms_lower_quartile']:6.2f})"
                f"  attention call {row['attention_call_us_median']:6.1f} us"
                f" (q1 {row['attention_call_us_lower_quartile']:6.1f})  first token {row['first_token_ms_median']:6.1f} ms",
                flush=True,
            )
        args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
