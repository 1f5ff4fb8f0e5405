"""POPE's metrics from a confusion table (Li et al., EMNLP 2023, Table 2; official evaluate.py).

"yes" is the positive class. Accuracy, precision, recall, F1 and the ratio of "yes" answers are
all functions of the summed counts (tp, fp, tn, fn), which is what the bootstrap resamples.
Precision or recall with an empty denominator is reported as 0 (the official script divides by
zero there).
"""

from __future__ import annotations

import numpy as np

from evals.task import safe_ratio

POPE_COUNTS: tuple[str, ...] = ("tp", "fp", "tn", "fn")
POPE_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def confusion_counts(prediction: str, label: str) -> tuple[float, float, float, float]:
    """(tp, fp, tn, fn) of one answer: exactly one of them is 1."""
    predicted_yes, is_yes = prediction == "yes", label == "yes"
    return (
        float(predicted_yes and is_yes),
        float(predicted_yes and not is_yes),
        float(not predicted_yes and not is_yes),
        float(not predicted_yes and is_yes),
    )


def pope_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from summed counts; `counts` is [..., 4] in `POPE_COUNTS` order, results are [...]."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, tn, fn = (counts[..., i] for i in range(4))
    total = tp + fp + tn + fn
    precision = safe_ratio(tp, tp + fp)
    recall = safe_ratio(tp, tp + fn)
    return {
        "accuracy": safe_ratio(tp + tn, total),
        "precision": precision,
        "recall": recall,
        "f1": safe_ratio(2 * precision * recall, precision + recall),
        "yes_ratio": safe_ratio(tp + fp, total),
    }
