"""From recorded outputs to metrics: score every item, sum counts per group, bootstrap.

Scoring reads only the merged records and the task, never the model, so a finished run can be
re-scored (a fixed synonym list, another answer rule) without generating again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from evals.bootstrap import BOOTSTRAP_SAMPLES, CONFIDENCE, bootstrap_estimates
from evals.errors import IncompleteRunError
from evals.results import EvalResult
from evals.task import ItemScore, Task


def require_outputs(task: Task, outputs: Mapping[str, object]) -> None:
    """Raise `IncompleteRunError` naming the first items that have no output."""
    missing = [item.item_id for item in task.items if item.item_id not in outputs]
    if missing:
        raise IncompleteRunError(
            f"{len(missing)} of {len(task.items)} {task.name} items have no output, e.g. {missing[:5]}"
        )


def score_items(task: Task, outputs: Mapping[str, str]) -> list[ItemScore]:
    """Scores in task item order; every item must have an output."""
    require_outputs(task, outputs)
    return [task.score(item, outputs[item.item_id]) for item in task.items]


def summarize(
    task: Task,
    scores: Sequence[ItemScore],
    *,
    name: str,
    out_dir: Path,
    seed: int = 0,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
) -> EvalResult:
    """Metrics and bootstrap intervals per group."""
    counts = np.array([score.counts for score in scores], dtype=np.float64)  # [items, k]
    groups = np.array([item.group for item in task.items])
    metrics, sums, sizes = {}, {}, {}
    for group in task.groups():
        rows = counts[groups == group]
        metrics[group] = bootstrap_estimates(
            rows, task.metrics_from_counts, samples=bootstrap_samples, confidence=confidence, seed=seed, stream=group
        )
        sums[group] = dict(zip(task.count_names, (float(x) for x in rows.sum(axis=0))))
        sizes[group] = int(rows.shape[0])
    return EvalResult(
        task=task.name,
        name=name,
        metrics=metrics,
        counts=sums,
        n_items=sizes,
        metric_names=task.metric_names,
        percent_metrics=task.percent_metrics,
        out_dir=out_dir,
        confidence=confidence,
    )
