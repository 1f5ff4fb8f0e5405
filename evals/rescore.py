"""Re-score finished runs from their records, with the current scoring code: no model, no images.

A run's `records.jsonl` holds every item's prompt, reference and output, so a corrected scorer (the
original CHAIR rules, POPE's official answer rule) can be applied to committed runs. The run's
`results.json` keeps what produced it (config, command, versions, timing) and gains `rescored`:
when, with which scoring, and the metric values it had before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evals.chair.task import chair_task_from_items
from evals.errors import EvalError, RecordFormatError
from evals.pope.task import pope_task_from_items
from evals.records import read_records
from evals.results import EvalResult, environment_versions
from evals.runner import write_outcome
from evals.scoring import score_items, summarize
from evals.task import EvalItem, Task

#: scoring options per task, and their defaults (the original scripts' rules)
SCORING_DEFAULTS: dict[str, dict[str, Any]] = {
    "chair": {"vocabulary": "original"},
    "pope": {"answer_rule": "official"},
}


def _task(name: str, items: tuple[EvalItem, ...], config: Mapping[str, Any], scoring: Mapping[str, Any]) -> Task:
    max_new_tokens = int(config.get("max_new_tokens", 0))
    if name == "chair":
        return chair_task_from_items(items, max_new_tokens=max_new_tokens, config=config, **scoring)
    if name == "pope":
        return pope_task_from_items(items, max_new_tokens=max_new_tokens, config=config, **scoring)
    raise EvalError(f"cannot re-score a {name!r} run (known: {', '.join(SCORING_DEFAULTS)})")


def rescore_run(out_dir: str | Path, **scoring: Any) -> EvalResult:
    """Score `out_dir`'s records again (options default to `SCORING_DEFAULTS`) and rewrite its outputs."""
    out_dir = Path(out_dir)
    results_path, records_path = out_dir / "results.json", out_dir / "records.jsonl"
    for path in (results_path, records_path):
        if not path.is_file():
            raise EvalError(f"{out_dir} is not a finished run: {path.name} is missing")
    previous = json.loads(results_path.read_text(encoding="utf-8"))
    name = previous["task"]
    if name not in SCORING_DEFAULTS:
        raise EvalError(f"{results_path}: cannot re-score a {name!r} run (known: {', '.join(SCORING_DEFAULTS)})")
    unknown = set(scoring) - set(SCORING_DEFAULTS[name])
    if unknown:
        raise EvalError(f"{name} has no scoring option {sorted(unknown)}; options: {sorted(SCORING_DEFAULTS[name])}")
    records = read_records(records_path)
    try:
        items = tuple(
            EvalItem(r["id"], r["group"], r["image"], r["image"], r["prompt"], r["reference"]) for r in records
        )
    except KeyError as err:
        raise RecordFormatError(f"{records_path}: a record lacks {err}") from err
    config = previous["config"]
    options = {**SCORING_DEFAULTS[name], **scoring}
    task = _task(name, items, config.get("task_config", {}), options)
    scores = score_items(task, {r["id"]: r["output"] for r in records})
    result = summarize(
        task,
        scores,
        name=previous["name"],
        out_dir=out_dir,
        seed=previous.get("seed", 0),
        bootstrap_samples=config.get("bootstrap_samples", 1000),
        confidence=previous.get("confidence", 0.95),
    )
    report = {k: v for k, v in previous.items() if k not in ("task", "name", "metrics", "counts", "n_items")}
    report["config"] = {**config, "scoring": dict(task.scoring)}
    report["rescored"] = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scoring": dict(task.scoring),
        "previous_scoring": config.get("scoring", {}),
        "previous_metrics": previous["metrics"],
        "versions": environment_versions(),
    }
    write_outcome(task, scores, result, out_dir, report)
    return result
