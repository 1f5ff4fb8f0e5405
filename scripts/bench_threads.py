"""Tokens/s of the embedded model on the CPU by torch thread count, quiet and beside a busy thread.

The app generates in a worker thread while Streamlit's server (and, in tests, a browser) run on the
same cores. This measures what `lvlm_guard.threads` decides: for each thread count, greedy
generation of a description (fixed length, EOS ignored) in a worker thread, (a) on a quiet
process and (b) with one competing busy thread standing in for the server; paired rounds,
medians. Results: results/threads/bench_threads.json.

    python scripts/bench_threads.py --rounds 5 --tokens 64 --out results/threads/bench_threads.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import torch
from PIL import Image

import lvlm_guard as lg
from lvlm_guard.embedded.world.coco_format import ensure_world
from lvlm_guard.threads import thread_count, usable_cpus


def _busy(stop: threading.Event) -> None:
    """A competing CPU-bound thread (pure Python, holds the GIL part of the time like a web server)."""
    x = 0
    while not stop.is_set():
        for i in range(10_000):
            x += i * i


def run_once(model, processor, image, threads: int, tokens: int, busy: bool) -> float:
    """Seconds for one generation of `tokens` new tokens in a worker thread with `threads` threads."""
    guard = lg.attach(model, processor, [])
    result = {}

    def work():
        torch.set_num_threads(threads)
        start = time.perf_counter()
        guard.generate([image], ["Please describe this image in detail."], max_new_tokens=tokens,
                       min_new_tokens=tokens)  # fmt: skip
        result["seconds"] = time.perf_counter() - start

    stop = threading.Event()
    competitor = threading.Thread(target=_busy, args=(stop,), daemon=True) if busy else None
    try:
        if competitor:
            competitor.start()
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        stop.set()
        if competitor:
            competitor.join()
        guard.detach()
    return result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", default=None, help="thread counts to compare (default 1..usable CPUs)")
    parser.add_argument("--out", type=Path, default=Path("results/threads/bench_threads.json"))
    args = parser.parse_args()

    counts = [int(x) for x in args.threads.split(",")] if args.threads else list(range(1, usable_cpus() + 1))
    model, processor = lg.load("tiny-coco")
    root = ensure_world("test", progress=False)
    image = Image.open(next(iter(sorted((root / "test").glob("*.*"))))).convert("RGB")
    run_once(model, processor, image, counts[-1], 4, busy=False)  # warm-up
    rows = []
    for busy in (False, True):
        times = {n: [] for n in counts}
        for _ in range(args.rounds):  # paired: every count once per round
            for n in counts:
                times[n].append(run_once(model, processor, image, n, args.tokens, busy))
        for n in counts:
            median = statistics.median(times[n])
            rows.append({"busy_thread": busy, "threads": n, "median_s": round(median, 4),
                         "tokens_per_s": round(args.tokens / median, 2), "seconds": [round(t, 4) for t in times[n]]})  # fmt: skip
            print(f"busy={busy!s:5} threads={n}: {args.tokens / median:7.2f} tok/s (median of {args.rounds})")
    default = torch.get_num_threads()
    chosen = {"cli_and_evals": thread_count(1), "app": thread_count(1, reserve=1)}
    report = {
        "model": "tiny-coco",
        "tokens": args.tokens,
        "rounds": args.rounds,
        "usable_cpus": usable_cpus(),
        "torch_default_threads": default,
        "lvlm_guard_choice": chosen,
        "machine": {"processor": platform.processor(), "python": platform.python_version(), "torch": torch.__version__},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
