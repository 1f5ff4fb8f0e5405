"""Timing tools of the speed benchmarks (scripts/bench_overhead.py, scripts/host_cost_eager.py):
robust per-step clocks and paired ratios that hold through the host stalls of a shared GPU machine,
and a per-call timer of the attention function. Library code, so tests and scripts import it
without reaching into each other."""

from __future__ import annotations

import statistics
import time

import torch
from transformers import AttentionInterface, StoppingCriteria

from lvlm_guard.engine import attention


class StepClock(StoppingCriteria):
    """Host time at the end of every generated token (generate asks its stopping criteria once
    per step and syncs with the GPU there). The median interval between stamps is one decoding
    step's time: unlike a run's mean, it holds still when the shared host stalls the process for a
    part of a run (eager decoding is bound by host time; whole runs scatter 2x on the H200)."""

    def __init__(self) -> None:
        self.started: float | None = None  # set by the caller when generate starts
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> bool:
        self.stamps.append(time.perf_counter())
        return False

    def first_token(self) -> float:
        """Seconds from the start to the first token: prefill (and any image-free branch)."""
        return self.stamps[0] - self.started

    def intervals(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.stamps, self.stamps[1:])]


def step_statistics(clocks: dict[str, list[StepClock]], mode: str, batch: int, new_tokens: int) -> dict:
    """Robust speed of a mode from its runs' step clocks: the median decoding step, the median time
    to the first token, and tokens/s rebuilt from the two (`first + (n - 1) * step`: what a run
    takes when the host does not stall it; for VHR it includes the image-free branch). Ratios to
    plain: overall, and paired (the median over rounds of plain's run against this mode's run)."""

    def rate(first: float, step: float) -> float:
        return batch * new_tokens / (first + (new_tokens - 1) * step)

    def run_rate(clock: StepClock) -> float:
        return rate(clock.first_token(), statistics.median(clock.intervals()))

    def summary(runs: list[StepClock]) -> tuple[float, float]:
        """(median step over all runs, median time to the first token)"""
        step = statistics.median(s for clock in runs for s in clock.intervals())
        return step, statistics.median(clock.first_token() for clock in runs)

    runs = clocks[mode]
    step, first = summary(runs)
    stats = {
        "step_ms_median": step * 1e3,
        "step_ms_run_medians": [statistics.median(clock.intervals()) * 1e3 for clock in runs],
        "first_token_ms_median": first * 1e3,
        "steady_tokens_per_s": rate(first, step),
        "step_ratio_to_plain": None,
        "step_ratio_to_plain_paired_median": None,
        "steady_ratio_to_plain": None,
        "steady_ratio_to_plain_paired_median": None,
    }
    if "plain" in clocks:  # plain against itself: exactly 1.0
        plain = clocks["plain"]
        plain_step, plain_first = summary(plain)
        stats["step_ratio_to_plain"] = plain_step / step
        stats["step_ratio_to_plain_paired_median"] = statistics.median(
            statistics.median(p.intervals()) / statistics.median(m.intervals()) for p, m in zip(plain, runs)
        )
        stats["steady_ratio_to_plain"] = stats["steady_tokens_per_s"] / rate(plain_first, plain_step)
        stats["steady_ratio_to_plain_paired_median"] = statistics.median(
            run_rate(m) / run_rate(p) for p, m in zip(plain, runs)
        )
    return stats


class AttentionTimer:
    """Times the decoding calls (one query row) of the attention function the model calls: stock
    SDPA (looked up by name), and the guard's function (registered again by every attach, so the
    module's function itself is wrapped). The guard calls stock SDPA directly: no call counts twice."""

    def __init__(self) -> None:
        self.calls_ns: list[int] = []
        self.originals = (AttentionInterface._global_mapping["sdpa"], attention.guarded_attention_forward)

    def __enter__(self) -> AttentionTimer:
        AttentionInterface._global_mapping["sdpa"] = self._timed(self.originals[0])
        attention.guarded_attention_forward = self._timed(self.originals[1])
        attention.register_guarded_attention()
        return self

    def __exit__(self, *exc) -> None:
        AttentionInterface._global_mapping["sdpa"], attention.guarded_attention_forward = self.originals
        attention.register_guarded_attention()

    def _timed(self, function):
        calls = self.calls_ns

        def timed(module, query, *args, **kwargs):
            start = time.perf_counter_ns()
            result = function(module, query, *args, **kwargs)
            if query.shape[2] == 1:
                calls.append(time.perf_counter_ns() - start)
            return result

        return timed


def quartile(values: list[float]) -> float:
    return statistics.quantiles(values, n=4)[0]
