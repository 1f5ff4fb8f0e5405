"""Where a guard's decoding time goes: CUDA kernels and host time per generated token, by mode.

On the LLaVA-1.5-7B shape (random weights, bf16), after a warm-up generate (which compiles the
static-cache decode), one generate of `--new-tokens` runs under torch.profiler. Per mode it
reports the kernels launched and the GPU time per decoding step, the kernels that differ from
plain the most, and the wall time. Decoding steps alone: a profiled generate of one token (the
prefill and the first step) is subtracted and the rest divided by `--new-tokens - 1`. Compare a mode's row with plain's to see whether its extra
time is GPU work (more or slower kernels) or host time (launch gaps). Writes JSON to --out.

    python scripts/profile_decode.py --modes plain pai var vhr --cache static --batch 8 --out prof.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_overhead import build_model, make_inputs, run_generate  # noqa: E402


def kernel_stats(prof) -> tuple[Counter, Counter]:
    """(launches, GPU microseconds) per CUDA kernel name."""
    launches, micros = Counter(), Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            launches[event.name] += 1
            micros[event.name] += event.device_time_total
    return launches, micros


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--modes", nargs="+", default=["plain", "pai", "var", "vhr"])
    parser.add_argument("--cache", choices=["static", "dynamic"], default="static")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="4-layer model, to check the script quickly")
    args = parser.parse_args()
    model = build_model("cuda", smoke=args.smoke)
    inputs = make_inputs(args.batch, "cuda")
    rows, per_kernel = {}, {}
    for mode in args.modes:
        run_generate(model, inputs, mode, args.new_tokens, args.cache)  # warm-up (compiles the static decode)
        stats = {}
        for new_tokens in (args.new_tokens, 1):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                wall, _, _ = run_generate(model, inputs, mode, new_tokens, args.cache)
            stats[new_tokens] = (wall, *kernel_stats(prof))
        (wall, launches, micros), (first_wall, first_launches, first_micros) = stats[args.new_tokens], stats[1]
        launches.subtract(first_launches)  # the decoding steps after the first
        micros.subtract(first_micros)
        steps = args.new_tokens - 1
        rows[mode] = {
            "wall_s": wall,
            "decode_wall_ms_per_step": (wall - first_wall) / steps * 1000,
            "kernels_per_step": sum(launches.values()) / steps,
            "gpu_us_per_step": sum(micros.values()) / steps,
        }
        per_kernel[mode] = {"launches": launches, "micros": micros}
        print(f"{mode:10s} {rows[mode]}", flush=True)
    if "plain" in per_kernel:
        base = per_kernel["plain"]
        for mode, stats in per_kernel.items():
            extra = Counter(stats["micros"])
            extra.subtract(base["micros"])
            rows[mode]["most_extra_gpu_us_per_step"] = [
                (name[:120], round(us / steps, 2), (stats["launches"][name] - base["launches"][name]) / steps)
                for name, us in extra.most_common(8)
            ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "modes": rows}, indent=1))
    for mode, row in rows.items():
        print(mode, json.dumps(row.get("most_extra_gpu_us_per_step", []))[:1500], flush=True)


if __name__ == "__main__":
    main()
