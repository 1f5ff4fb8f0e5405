"""Hallucination benchmarks for lvlm_guard: POPE and CHAIR on COCO-format data.

Building questions, running a model, parsing answers and scoring are separate functions
(`evals.pope`, `evals.chair`); `run_task` / `run_grid` wire them with checkpointing, resuming,
data parallelism through accelerate and bootstrap intervals; `evals.cli` adds `eval pope|chair`
to the command line. The model is any `AnswerFn(images, prompts, max_new_tokens) -> texts`.
"""

from __future__ import annotations

from evals.bootstrap import MetricEstimate, bootstrap_estimates
from evals.chair.mentions import Mention, caption_objects, find_mentions
from evals.chair.metrics import CHAIR_METRICS, chair_metrics
from evals.chair.nlp import NltkDataError
from evals.chair.task import CHAIR_PROMPT, chair_task, ground_truth_objects
from evals.cli import add_eval_subcommand, eval_main
from evals.coco import CocoFiles, CocoSplit, find_split, load_split
from evals.errors import (
    AnswerCountError,
    CaptionsMismatchError,
    CocoFormatError,
    CocoLayoutError,
    EvalError,
    GridSpecError,
    IncompleteRunError,
    NotEnoughCategoriesError,
    NotEnoughImagesError,
    PopeFormatError,
    RecordFormatError,
    ResumeMismatchError,
    UnknownPopeSplitError,
    UnknownVocabularyError,
)
from evals.grid import GridResult, run_grid
from evals.parallel import ProcessShard, current_shard
from evals.pope.build import POPE_SPLITS, build_pope_questions, build_pope_splits, sample_pope_images
from evals.pope.files import PopeQuestion, read_pope_file, write_pope_file
from evals.pope.metrics import POPE_METRICS, pope_metrics
from evals.pope.parse import parse_yes_no, parse_yes_no_official
from evals.pope.task import pope_task
from evals.results import EvalResult
from evals.runner import run_task
from evals.table import markdown_table
from evals.task import AnswerFn, EvalItem, ItemScore, LazyAnswerFn, Task

__all__ = [
    "CHAIR_METRICS",
    "CHAIR_PROMPT",
    "POPE_METRICS",
    "POPE_SPLITS",
    "AnswerCountError",
    "AnswerFn",
    "CaptionsMismatchError",
    "CocoFiles",
    "CocoFormatError",
    "CocoLayoutError",
    "CocoSplit",
    "EvalError",
    "EvalItem",
    "EvalResult",
    "GridResult",
    "GridSpecError",
    "IncompleteRunError",
    "ItemScore",
    "LazyAnswerFn",
    "Mention",
    "MetricEstimate",
    "NltkDataError",
    "NotEnoughCategoriesError",
    "NotEnoughImagesError",
    "PopeFormatError",
    "PopeQuestion",
    "ProcessShard",
    "RecordFormatError",
    "ResumeMismatchError",
    "Task",
    "UnknownPopeSplitError",
    "UnknownVocabularyError",
    "add_eval_subcommand",
    "bootstrap_estimates",
    "build_pope_questions",
    "build_pope_splits",
    "caption_objects",
    "chair_metrics",
    "chair_task",
    "current_shard",
    "eval_main",
    "find_mentions",
    "find_split",
    "ground_truth_objects",
    "load_split",
    "markdown_table",
    "parse_yes_no",
    "parse_yes_no_official",
    "pope_metrics",
    "pope_task",
    "read_pope_file",
    "run_grid",
    "run_task",
    "sample_pope_images",
    "write_pope_file",
]
