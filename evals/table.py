"""One markdown table of several configurations side by side, each cell a value and its 95% CI.

Rows are metrics (per group when a task has several, e.g. "adversarial f1"), columns are the
configurations in the order given, so the effect of each guard reads across a row.
Percent metrics are shown x100 with one decimal, as in the POPE and CHAIR papers.
"""

from __future__ import annotations

from collections.abc import Sequence

from evals.bootstrap import MetricEstimate
from evals.results import EvalResult


def format_estimate(estimate: MetricEstimate, percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    value, low, high = (scale * x for x in (estimate.value, estimate.low, estimate.high))
    if low != low:  # nan: no bootstrap
        return f"{value:.1f}"
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def markdown_table(results: Sequence[EvalResult]) -> str:
    """Side-by-side table of results of the same task (the first result fixes rows and groups)."""
    if not results:
        raise ValueError("no results to tabulate")
    first = results[0]
    groups = list(first.metrics)
    header = ["metric", *(r.name for r in results)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(results)) + "|"]
    for group in groups:
        prefix = "" if len(groups) == 1 else f"{group} "
        for metric in first.metric_names:
            cells = []
            for result in results:
                estimate = result.metrics.get(group, {}).get(metric)
                cells.append("—" if estimate is None else format_estimate(estimate, metric in first.percent_metrics))
            label = metric + (" (%)" if metric in first.percent_metrics else "")
            lines.append(f"| {prefix}{label} | " + " | ".join(cells) + " |")
        lines.append(f"| {prefix}items | " + " | ".join(str(r.n_items.get(group, 0)) for r in results) + " |")
    note = f"{first.task.upper()}; cells: value [{100 * first.confidence:g}% bootstrap CI]"
    return note + "\n\n" + "\n".join(lines) + "\n"
