"""Percentile bootstrap confidence intervals over items (Efron & Tibshirani, 1993, ch. 13).

Items (POPE questions, CHAIR captions) are resampled with replacement; every metric is recomputed
from the resample's summed counts, and the interval is the (a/2, 1-a/2) quantiles of those values.
Resampling is done as multinomial item weights times the per-item count matrix, in chunks, so
memory stays small at 1000 resamples of 9000 questions. The generator is seeded from the run seed
and the group name: intervals are reproducible and do not depend on which groups were run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class MetricEstimate:
    """A metric on all items and its bootstrap interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def bootstrap_estimates(
    counts: np.ndarray,
    metrics_from_counts: Callable[[np.ndarray], dict[str, np.ndarray]],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    stream: str = "",
) -> dict[str, MetricEstimate]:
    """Point estimates and percentile intervals of every metric; `counts` is [items, k]."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError(f"need a non-empty [items, counts] matrix, got shape {counts.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = counts.shape[0]
    point = metrics_from_counts(counts.sum(axis=0))
    if samples <= 0:
        return {name: MetricEstimate(float(v), float("nan"), float("nan")) for name, v in point.items()}
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    chunk = max(1, 2_000_000 // n)
    sums = []
    for start in range(0, samples, chunk):
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, samples - start))  # [chunk, n]
        sums.append(weights @ counts)  # [chunk, k]
    resampled = metrics_from_counts(np.concatenate(sums))
    tail = (1 - confidence) / 2
    estimates = {}
    for name, value in point.items():
        low, high = np.quantile(resampled[name], [tail, 1 - tail])
        estimates[name] = MetricEstimate(float(value), float(low), float(high))
    return estimates
