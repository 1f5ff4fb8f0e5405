"""What a benchmark is to the runner: items to ask, and how to score and aggregate answers.

Following lm-evaluation-harness / lmms-eval, a task is data plus small functions: building the
items, scoring one output, and turning summed per-item counts into metrics are separate, so each
can be tested alone and the runner only wires them and checkpoints. Every metric of POPE and
CHAIR is a ratio of sums of per-item counts, which is what makes one generic (and vectorised)
bootstrap possible: `metrics_from_counts` takes counts summed over any resample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image


class AnswerFn(Protocol):
    """The model side: one generated text per (image, prompt) pair, in order."""

    def __call__(self, images: list[Image.Image], prompts: list[str], max_new_tokens: int) -> list[str]: ...


@dataclass(frozen=True)
class EvalItem:
    """One question to one image.

    `item_id` is unique within a task and is the key for resuming and merging. `group` is the
    sub-benchmark it belongs to (a POPE split; "all" for CHAIR) and metrics are reported per group.
    `reference` holds what scoring needs (a POPE label, CHAIR ground-truth objects), JSON-able.
    """

    item_id: str
    group: str
    image_file: str
    image_path: str
    prompt: str
    reference: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemScore:
    """Per-item counts (aligned with `Task.count_names`) and details worth keeping for inspection."""

    counts: tuple[float, ...]
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A benchmark ready to run: its items, scorer, metric definitions and protocol settings."""

    name: str
    items: tuple[EvalItem, ...]
    max_new_tokens: int
    count_names: tuple[str, ...]
    score: Callable[[EvalItem, str], ItemScore]
    metrics_from_counts: Callable[[np.ndarray], dict[str, np.ndarray]]  # counts [..., k] -> {metric: [...]}
    metric_names: tuple[str, ...]
    percent_metrics: frozenset[str]
    config: Mapping[str, Any] = field(default_factory=dict)  # what is asked: fixed for the life of a run
    scoring: Mapping[str, Any] = field(default_factory=dict)  # how answers are read: may change on re-scoring

    def groups(self) -> tuple[str, ...]:
        """Group names in first-seen item order."""
        return tuple(dict.fromkeys(item.group for item in self.items))


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (e.g. precision with no "yes")."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


class LazyAnswerFn:
    """An AnswerFn built on first use, so that a finished (resumed) run never loads its model."""

    def __init__(self, factory: Callable[[], AnswerFn]) -> None:
        self._factory = factory
        self._answer_fn: AnswerFn | None = None

    @property
    def built(self) -> bool:
        return self._answer_fn is not None

    def __call__(self, images: list[Image.Image], prompts: list[str], max_new_tokens: int) -> list[str]:
        if self._answer_fn is None:
            self._answer_fn = self._factory()
        return self._answer_fn(images, prompts, max_new_tokens)

    def release(self) -> None:
        """Drop the built AnswerFn (and the model it holds) before the next configuration loads."""
        self._answer_fn = None
