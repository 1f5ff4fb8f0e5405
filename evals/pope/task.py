"""POPE as a runnable `Task`: question sets in, items and scoring out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from evals.pope.files import PopeQuestion
from evals.pope.metrics import POPE_COUNTS, POPE_METRICS, confusion_counts, pope_metrics
from evals.pope.parse import ANSWER_RULES, is_empty_answer, parse_yes_no, parse_yes_no_official
from evals.task import EvalItem, ItemScore, Task

#: POPE answers are one sentence; 64 new tokens leave room for a long first sentence ("There is a
#: large brown dog lying on the couch next to ..."), which is all the parser reads. Our choice.
POPE_MAX_NEW_TOKENS = 64
#: per-item diagnostics summed beside the confusion counts: empty outputs, and outputs on which our
#: parser and the literal official rule disagree
POPE_DIAGNOSTICS: tuple[str, ...] = ("empty", "rule_disagreements")


def pope_items(
    question_sets: Mapping[str, Sequence[PopeQuestion]],
    image_path: Callable[[str], Path],
    limit: int | None = None,
) -> tuple[EvalItem, ...]:
    """Items of every split in order; `limit` keeps the first `limit` questions of each split."""
    items = []
    for split, questions in question_sets.items():
        for question in questions[:limit] if limit is not None else questions:
            items.append(
                EvalItem(
                    item_id=f"{split}/{question.question_id}",
                    group=split,
                    image_file=question.image,
                    image_path=str(image_path(question.image)),
                    prompt=question.text,
                    reference={"label": question.label, "object": question.object},
                )
            )
    return tuple(items)


def score_pope_answer(item: EvalItem, output: str, answer_rule: str = "official") -> ItemScore:
    """Confusion counts of one answer plus the two diagnostics."""
    prediction = ANSWER_RULES[answer_rule](output)
    label = item.reference["label"]
    disagreement = parse_yes_no(output) != parse_yes_no_official(output)
    counts = confusion_counts(prediction, label) + (float(is_empty_answer(output)), float(disagreement))
    return ItemScore(counts=counts, details={"prediction": prediction, "label": label})


def _metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    return pope_metrics(np.asarray(counts)[..., : len(POPE_COUNTS)])


def pope_task(
    question_sets: Mapping[str, Sequence[PopeQuestion]],
    image_path: Callable[[str], Path],
    *,
    max_new_tokens: int = POPE_MAX_NEW_TOKENS,
    answer_rule: str = "official",
    limit: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> Task:
    """POPE over the given splits; `config` (protocol settings) is recorded with the results."""
    settings = {"max_new_tokens": max_new_tokens, "limit": limit, **(config or {})}
    items = pope_items(question_sets, image_path, limit)
    return pope_task_from_items(items, max_new_tokens=max_new_tokens, config=settings, answer_rule=answer_rule)


def pope_task_from_items(
    items: tuple[EvalItem, ...],
    *,
    max_new_tokens: int = POPE_MAX_NEW_TOKENS,
    config: Mapping[str, Any] | None = None,
    answer_rule: str = "official",
) -> Task:
    """The POPE task over given items (built by `pope_task`, or read back from a run's records)."""
    if answer_rule not in ANSWER_RULES:
        raise ValueError(f"unknown POPE answer rule {answer_rule!r}; choose from {', '.join(ANSWER_RULES)}")
    return Task(
        name="pope",
        items=items,
        max_new_tokens=max_new_tokens,
        count_names=POPE_COUNTS + POPE_DIAGNOSTICS,
        score=partial(score_pope_answer, answer_rule=answer_rule),
        metrics_from_counts=_metrics,
        metric_names=POPE_METRICS,
        percent_metrics=frozenset(POPE_METRICS),
        config=dict(config or {}),
        scoring={"answer_rule": answer_rule},
    )
