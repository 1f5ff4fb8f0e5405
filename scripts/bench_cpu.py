"""Guarded vs plain tokens/s on the CPU, on the embedded model (issue 22: target >= 0.7x for every guard).

Every registered guard at its defaults (or the specs given), greedy generation of a fixed number of
new tokens (EOS ignored) for one prompt with its image at batch 1 and batch 8, paired rounds (plain and
the guard back to back in each round, the order alternating), medians of the per-round ratios. The
machine's usable CPUs are used (`lvlm_guard.threads`). Results: results/bench_cpu.json.

    python scripts/bench_cpu.py --rounds 3 --tokens 48 --out results/bench_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

import lvlm_guard as lg
from lvlm_guard.embedded.world import ensure_world
from lvlm_guard.threads import configure_threads


def timed(model, processor, spec: str | None, images, prompts, tokens: int) -> float:
    """Seconds of one guarded (spec) or plain (None) generation."""
    guard = lg.attach(model, processor, lg.parse_guard_spec(spec) if spec else [])
    try:
        start = time.perf_counter()
        guard.generate(images, prompts, max_new_tokens=tokens, min_new_tokens=tokens)
        return time.perf_counter() - start
    finally:
        guard.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guards", default=None, help="comma-separated specs ('+' stacks); default: every guard")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("results/bench_cpu.json"))
    args = parser.parse_args()

    threads = configure_threads()
    guards = [g.replace("+", ",") for g in args.guards.split(",")] if args.guards else lg.available_methods()
    model, processor = lg.load("tiny-coco")
    root = ensure_world("test", progress=False)
    files = sorted((root / "test").glob("*.jpg"))[:8]
    pictures = [Image.open(f).convert("RGB") for f in files]
    prompt = "Please describe this image in detail."
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        images, prompts = pictures[:batch], [prompt] * batch
        timed(model, processor, None, images, prompts, 4)  # warm-up
        for spec in guards:
            ratios, plain_s, guard_s = [], [], []
            for r in range(args.rounds):
                order = (None, spec) if r % 2 == 0 else (spec, None)
                seconds = {s: timed(model, processor, s, images, prompts, args.tokens) for s in order}
                plain_s.append(seconds[None])
                guard_s.append(seconds[spec])
                ratios.append(seconds[None] / seconds[spec])
            row = {
                "guard": spec, "batch": batch,
                "plain_tokens_per_s": round(batch * args.tokens / statistics.median(plain_s), 2),
                "guard_tokens_per_s": round(batch * args.tokens / statistics.median(guard_s), 2),
                "ratio_paired_median": round(statistics.median(ratios), 3),
                "ratios": [round(x, 3) for x in ratios],
            }  # fmt: skip
            rows.append(row)
            print(f"batch {batch} {spec:>12}: {row['guard_tokens_per_s']:8.1f} tok/s vs plain "
                  f"{row['plain_tokens_per_s']:8.1f}: {row['ratio_paired_median']:.2f}x", flush=True)  # fmt: skip
    report = {
        "model": "tiny-coco", "tokens": args.tokens, "rounds": args.rounds, "threads": threads,
        "target": ">= 0.7x plain for every guard (issue 22)",
        "machine": {"processor": platform.processor(), "python": platform.python_version(), "torch": torch.__version__},
        "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
