"""CHAIR metrics (Rohrbach et al., EMNLP 2018, Sec. 3) and the usual companions.

Per caption, with M the set of COCO objects it mentions (each counted once) and G the image's
ground-truth objects:

    CHAIR_I = sum |M \\ G| / sum |M|           (share of mentioned objects that are hallucinated)
    CHAIR_S = #captions with M \\ G non-empty / #captions
    recall  = sum |M & G| / sum |G|           (share of ground-truth objects mentioned; reported
                                              beside CHAIR by OPERA, PAI and others, so that a
                                              model cannot win by saying less)
    length  = mean number of words per caption (whitespace-separated)

Sums run over captions (micro-averages), so every metric is a ratio of summed per-caption counts.
"""

from __future__ import annotations

from collections.abc import Set

import numpy as np

from evals.task import safe_ratio

CHAIR_COUNTS: tuple[str, ...] = (
    "captions",
    "hallucinated_captions",
    "mentioned",
    "hallucinated",
    "gt_objects",
    "gt_mentioned",
    "words",
)
CHAIR_METRICS: tuple[str, ...] = ("chair_s", "chair_i", "recall", "length")
CHAIR_PERCENT_METRICS = frozenset({"chair_s", "chair_i", "recall"})


def caption_counts(mentioned: Set[str], ground_truth: Set[str], caption: str) -> tuple[float, ...]:
    """Counts of one caption in `CHAIR_COUNTS` order."""
    hallucinated = mentioned - ground_truth
    return (
        1.0,
        float(bool(hallucinated)),
        float(len(mentioned)),
        float(len(hallucinated)),
        float(len(ground_truth)),
        float(len(mentioned & ground_truth)),
        float(len(caption.split())),
    )


def chair_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from summed counts; `counts` is [..., 7] in `CHAIR_COUNTS` order, results are [...]."""
    counts = np.asarray(counts, dtype=np.float64)
    captions, bad_captions, mentioned, hallucinated, gt, gt_mentioned, words = (counts[..., i] for i in range(7))
    return {
        "chair_s": safe_ratio(bad_captions, captions),
        "chair_i": safe_ratio(hallucinated, mentioned),
        "recall": safe_ratio(gt_mentioned, gt),
        "length": safe_ratio(words, captions),
    }
