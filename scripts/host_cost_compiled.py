"""Host time of a compiled static-cache decoding step, by guard mode, on CPU.

Why: a compiled decoding step on the GPU waits for its host part (dynamo's guard checks, the
generate loop, hooks outside the graph) before the CUDA graph runs, and every step syncs; host
time a guard adds shows up 1:1 in tokens/s. The GPU profile cannot see it. Here the graph's
outputs are computed once and then returned as they are (a backend that caches them), so a step
costs host time only; a 32-layer tiny LLaVA gives the 7B model's per-layer structure. Reported per
mode: milliseconds per decoding step with guard checks and without them
(`torch.compiler.set_stance(skip_guard_eval_unsafe=True)`). Timings on a shared 2-core machine
scatter by ~0.3 ms between runs: compare modes of one run.

    python scripts/host_cost_compiled.py --modes plain pai var vhr --out host_cost_compiled.json

Each mode runs in a fresh process (compiled frames of one process would share a cache).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(mode: str, steps: int, reps: int) -> dict:
    import torch
    from transformers import CompileConfig

    sys.path.insert(0, str(ROOT / "tests"))
    from test_guard import IMAGES, PROMPTS
    from test_var import _sinky_var
    from tiny_models import tiny_llava

    import lvlm_guard as lg

    model, processor = tiny_llava(num_layers=32)
    methods = {"plain": None, "pai": lambda: [lg.PAI()], "var": lambda: [_sinky_var(model)], "vhr": lambda: [lg.VHR()]}
    guard = lg.attach(model, processor, methods[mode]()) if methods[mode] else lg.Guard(model, processor, [])
    inputs = guard.prepare(IMAGES, PROMPTS)

    def backend(graph_module, example_inputs):
        cached = []

        def run(*args):
            if not cached:
                cached.append(graph_module.forward(*args))
            return cached[0]

        return run

    config = CompileConfig(fullgraph=True, backend=backend, mode=None)
    config._compile_all_devices = True  # compile on CPU too

    def generate(new_tokens: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           cache_implementation="static", compile_config=config)  # fmt: skip
        return time.perf_counter() - start

    def per_step() -> float:
        short, long = (min(generate(n) for _ in range(reps)) for n in (2, steps + 2))
        return (long - short) / steps * 1e3

    generate(steps + 2)  # compiles (the static cache's length is fixed by max_new_tokens)
    with_guards = per_step()
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        without_guards = per_step()
    return {"mode": mode, "host_ms_per_step": with_guards, "host_ms_per_step_without_guard_checks": without_guards}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["plain", "pai", "var", "vhr"])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one mode in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.reps)))
        return
    rows = []
    for mode in args.modes:
        command = [sys.executable, __file__, "--one", mode, "--steps", str(args.steps), "--reps", str(args.reps)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{mode:6s} {row['host_ms_per_step']:7.3f} ms/step  ({row['host_ms_per_step_without_guard_checks']:.3f} without guard checks)"
        )
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args), "modes": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
