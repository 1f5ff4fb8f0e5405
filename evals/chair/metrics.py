"""CHAIR metrics as the original script computes them (Rohrbach et al., EMNLP 2018, Sec. 3;
LisaAnne/Hallucination `utils/chair.py` `compute_chair`, with shikiw/OPERA `chair.py`'s recall and
length), from per-caption counts.

Per caption, with M the list of its object mentions (`evals.chair.caption_objects`: one entry per
mention, so an object named twice is there twice) and G the image's ground-truth objects (a set):

    CHAIR_I = sum #{m in M : m not in G} / sum |M|   (hallucinated mentions / all mentions)
    CHAIR_S = #captions with a hallucinated mention / #captions
    recall  = sum |set(M) & G| / sum |G|            (OPERA's addition: ground-truth objects named)
    length  = mean number of words per caption, as the original counts them: nltk tokens,
              punctuation included, a double word one word (OPERA's "Len" is 0.01 x this)

Sums run over captions (micro-averages), so every metric is a ratio of summed per-caption counts.
"""

from __future__ import annotations

from collections.abc import Sequence, Set

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


def caption_counts(mentions: Sequence[str], ground_truth: Set[str], words: int) -> tuple[float, ...]:
    """Counts of one caption in `CHAIR_COUNTS` order; `mentions` has one category per mention."""
    hallucinated = [m for m in mentions if m not in ground_truth]
    return (
        1.0,
        float(bool(hallucinated)),
        float(len(mentions)),
        float(len(hallucinated)),
        float(len(ground_truth)),
        float(len(set(mentions) & ground_truth)),
        float(words),
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
