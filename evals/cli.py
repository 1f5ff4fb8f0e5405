"""`eval pope|chair` for the lvlm-guard command line, testable with any `make_answer_fn`.

The lead's CLI wires it in with one call:

    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_subcommand(sub, make_answer_fn)    # make_answer_fn(model, guard, **opts) -> AnswerFn
    args = parser.parse_args(argv)
    return args.func(args)

Guards: `--guard SPEC` runs one configuration; SPEC is passed verbatim to `make_answer_fn` in the
library's spec syntax (`none`, `pai`, `pai:alpha=0.5,var` -- a comma stacks methods).
`--grid A,B,C` runs several configurations and prints one table; inside a grid entry `+` stacks
methods (`--grid none,pai,pai+var`), and is turned into the library's comma before the call.
`--opt KEY=VALUE` (repeatable) is passed to `make_answer_fn` as a keyword, VALUE read as a JSON
literal when it is one (`--opt load_in_4bit=true`, `--opt dtype=bfloat16`); under several
processes `device=<this process's device>` is passed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evals.chair.task import (
    CHAIR_MAX_NEW_TOKENS,
    CHAIR_NUM_IMAGES,
    CHAIR_PROMPT,
    GROUND_TRUTHS,
    chair_task,
    ground_truth_objects,
)
from evals.chair.vocabulary import VOCABULARIES
from evals.coco import CocoSplit, find_split, load_split
from evals.errors import EvalError, GridSpecError, MissingDataError, NotEnoughImagesError, UnknownPopeSplitError
from evals.grid import check_grid_resumable, run_grid
from evals.parallel import current_shard
from evals.pope.build import POPE_MIN_IMAGES, POPE_NUM_IMAGES, POPE_SPLITS, build_pope_splits
from evals.pope.files import read_pope_file, split_name_of, write_pope_file
from evals.pope.parse import ANSWER_RULES
from evals.pope.task import POPE_MAX_NEW_TOKENS, pope_task
from evals.rescore import rescore_run
from evals.table import markdown_table
from evals.task import AnswerFn, Task

MakeAnswerFn = Callable[..., AnswerFn]
EMBEDDED_MODEL = "tiny-coco"  # the packaged model: its synthetic COCO world is found without --coco-root
WORLD_SPLIT = "test"


def parse_option_value(raw: str) -> Any:
    """A JSON literal when it is one ('3', '0.5', 'true', 'null', '[1, 2]'), else the string itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise GridSpecError(f"--opt expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = parse_option_value(value)
    return options


def guard_configurations(guard: str | None, grid: str | None) -> dict[str, str]:
    """Configuration name -> guard spec for `make_answer_fn` (see module docstring)."""
    if grid is None:
        spec = (guard or "none").strip() or "none"
        return {spec: spec}
    configurations: dict[str, str] = {}
    for entry in grid.split(","):
        name = entry.strip()
        if not name:
            raise GridSpecError(f"empty configuration in --grid {grid!r}")
        if name in configurations:
            raise GridSpecError(f"configuration {name!r} appears twice in --grid {grid!r}")
        configurations[name] = ",".join(part.strip() for part in name.split("+"))
    return configurations


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw}")
    return value


def resolve_data(args: argparse.Namespace, default_split: str) -> None:
    """Fill `args.coco_root` / `args.split`: given ones win; for the embedded model its synthetic
    world (built on first use); otherwise --coco-root is required."""
    if args.coco_root is None:
        if args.model != EMBEDDED_MODEL:
            raise MissingDataError(
                f"--coco-root is required for --model {args.model!r} (a folder with <split>/ images and "
                f"COCO annotations); only {EMBEDDED_MODEL!r} brings its own data"
            )
        from lvlm_guard.embedded.world.coco_format import ensure_world

        args.split = args.split or WORLD_SPLIT
        args.coco_root = ensure_world(args.split)
    args.split = args.split or default_split


def _add_common_arguments(
    parser: argparse.ArgumentParser, max_new_tokens: int, num_images: int, coco_root: Path | None, split: str
) -> None:
    parser.add_argument("--model", required=True, help="model id or path, passed to make_answer_fn")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--guard", default="none", help="one guard spec, e.g. none, pai, 'pai:alpha=0.5,var'")
    which.add_argument("--grid", help="several configurations side by side, e.g. none,pai,pai+var")
    parser.add_argument(
        "--coco-root",
        type=Path,
        default=coco_root,
        help="folder with <split>/ images and annotations"
        + (f" (default {coco_root})" if coco_root else f"; for --model {EMBEDDED_MODEL}: its synthetic world"),
    )
    parser.add_argument(
        "--split", default=None, help=f"image split folder (default {split}; {WORLD_SPLIT} for the synthetic world)"
    )
    parser.add_argument("--instances", type=Path, help="instances JSON (default: searched under --coco-root)")
    parser.add_argument(
        "--num-images", type=_positive_int, default=num_images, help=f"images to sample (default {num_images})"
    )
    parser.add_argument(
        "--max-new-tokens", type=_positive_int, default=max_new_tokens, help=f"default {max_new_tokens}"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="prompts per AnswerFn call (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and bootstrap (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="output folder; rerun with the same one to resume")
    parser.add_argument("--limit", type=_positive_int, help="only the first N items (per POPE split): smoke runs")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs (0: none)")
    parser.add_argument("--opt", action="append", metavar="KEY=VALUE", help="extra keyword for make_answer_fn")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_eval_subcommand(
    subparsers: argparse._SubParsersAction,
    make_answer_fn: MakeAnswerFn,
    *,
    default_coco_root: str | Path | None = None,
    default_split: str = "val2014",
) -> argparse.ArgumentParser:
    """Register `eval pope` and `eval chair`; `args.func(args)` runs the chosen one.

    With `default_coco_root` (e.g. the synthetic world's root) `--coco-root` may be left out.
    """
    root = Path(default_coco_root) if default_coco_root is not None else None
    parser = subparsers.add_parser(
        "eval", help="hallucination benchmarks (POPE, CHAIR)", description="Run POPE or CHAIR, resumably."
    )
    tasks = parser.add_subparsers(dest="eval_task", required=True, metavar="{pope,chair,rescore}")

    pope = tasks.add_parser("pope", help="POPE yes/no object probing (Li et al., 2023)")
    _add_common_arguments(pope, POPE_MAX_NEW_TOKENS, POPE_NUM_IMAGES, root, default_split)
    pope.add_argument("--pope-file", action="append", type=Path, help="official POPE question file (repeatable)")
    pope.add_argument("--pope-splits", default=",".join(POPE_SPLITS), help="splits to build (default all three)")
    pope.add_argument(
        "--answer-rule",
        choices=sorted(ANSWER_RULES),
        default="official",
        help="yes/no parser: POPE evaluate.py's rule (default), or ours (see evals/pope/parse.py); "
        "every run reports how many answers the two read differently",
    )
    pope.add_argument(
        "--pope-ground-truth",
        choices=GROUND_TRUTHS,
        default="instances",
        help="objects per image when building questions: instance annotations (default), or annotations "
        "plus the objects CHAIR finds in the reference captions (how the POPE repo collected COCO's)",
    )

    chair = tasks.add_parser("chair", help="CHAIR object hallucination in descriptions (Rohrbach et al., 2018)")
    _add_common_arguments(chair, CHAIR_MAX_NEW_TOKENS, CHAIR_NUM_IMAGES, root, default_split)
    chair.add_argument("--captions", type=Path, help="captions JSON (default: searched under --coco-root)")
    chair.add_argument("--prompt", default=CHAIR_PROMPT, help=f"default {CHAIR_PROMPT!r}")
    chair.add_argument(
        "--ground-truth",
        choices=("instances+captions", "instances"),
        default="instances+captions",
        help="CHAIR's union of annotations and reference captions (default), or annotations alone "
        "(for data whose annotations are complete and whose captions are noisy, like the synthetic world)",
    )
    chair.add_argument(
        "--vocabulary",
        choices=sorted(VOCABULARIES),
        default="original",
        help="object words: CHAIR's original synonym list (default), or ours extended (not comparable "
        "with published tables; recorded in results.json)",
    )

    rescore = tasks.add_parser(
        "rescore", help="score finished runs again from their records (current rules; no model needed)"
    )
    rescore.add_argument("runs", nargs="+", type=Path, help="run folders (holding records.jsonl, results.json)")
    rescore.add_argument("--answer-rule", choices=sorted(ANSWER_RULES), help="POPE runs: yes/no parser")
    rescore.add_argument("--vocabulary", choices=sorted(VOCABULARIES), help="CHAIR runs: object words")

    def run(args: argparse.Namespace) -> int:
        if args.eval_task == "rescore":
            return rescore_command(args)
        args.default_split = default_split
        return run_eval_command(args, make_answer_fn)

    parser.set_defaults(func=run)
    return parser


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_caption_objects(split: CocoSplit) -> CocoSplit:
    """The split with each image's objects = its annotations plus what CHAIR finds in its captions."""
    objects = {
        image.image_id: tuple(
            sorted(ground_truth_objects(split.objects.get(image.image_id, ()), split.captions.get(image.image_id, ())))
        )
        for image in split.images
    }
    return dataclasses.replace(split, objects=objects)


def build_pope_task(args: argparse.Namespace, write_questions: bool) -> Task:
    files = find_split(args.coco_root, args.split, instances=args.instances, need_instances=not args.pope_file)
    if args.pope_file:
        question_sets = {}
        for path in args.pope_file:
            name = split_name_of(path)
            name = name if name not in question_sets else path.stem
            question_sets[name] = read_pope_file(path)
        config = {"source": "file", "pope_files": {p.name: _file_sha256(p) for p in args.pope_file}}
    else:
        strategies = [s.strip() for s in args.pope_splits.split(",") if s.strip()]
        unknown = [s for s in strategies if s not in POPE_SPLITS]
        if unknown or not strategies:  # checked before the (slow) instances file is read
            raise UnknownPopeSplitError(f"--pope-splits: unknown {unknown}; choose from {', '.join(POPE_SPLITS)}")
        split = load_split(files, with_captions=args.pope_ground_truth == "instances+captions")
        if split.captions:
            split = with_caption_objects(split)
        if args.num_images < POPE_MIN_IMAGES:
            raise NotEnoughImagesError(
                f"--num-images {args.num_images}: POPE needs at least {POPE_MIN_IMAGES} images (negatives are "
                "drawn among the categories of the sampled images; the protocol uses 500)"
            )
        question_sets = build_pope_splits(split, args.num_images, args.seed, strategies)
        config = {
            "source": "built",
            "coco_split": args.split,
            "num_images": args.num_images,
            "seed": args.seed,
            "ground_truth": args.pope_ground_truth,
        }
    task = pope_task(
        question_sets,
        files.image_path,
        max_new_tokens=args.max_new_tokens,
        answer_rule=args.answer_rule,
        limit=args.limit,
        config=config,
    )
    if write_questions and config["source"] == "built":
        check_grid_resumable(task, guard_configurations(args.guard, args.grid), args.out, _run_info(args))
        for strategy, questions in question_sets.items():  # only once the folder is known to be this run's
            write_pope_file(questions, args.out / "questions" / f"coco_pope_{strategy}.json")
    return task


def _run_info(args: argparse.Namespace) -> Callable[[str], dict[str, str]]:
    configurations = guard_configurations(args.guard, args.grid)
    return lambda name: {"model": args.model, "guard": configurations[name]}


def build_chair_task(args: argparse.Namespace) -> Task:
    files = find_split(args.coco_root, args.split, instances=args.instances, captions=args.captions)
    split = load_split(files, with_captions=args.ground_truth == "instances+captions")
    return chair_task(
        split,
        files.image_path,
        num_images=args.num_images,
        seed=args.seed,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        ground_truth=args.ground_truth,
        vocabulary=args.vocabulary,
        config={"coco_split": args.split},
    )


def rescore_command(args: argparse.Namespace) -> int:
    """`eval rescore RUN...`: each run's metrics before and after; 2 on a bad run folder."""
    for run in args.runs:
        try:
            task = json.loads((run / "results.json").read_text(encoding="utf-8")).get("task")
            option = {"pope": ("answer_rule", args.answer_rule), "chair": ("vocabulary", args.vocabulary)}.get(task)
            scoring = {option[0]: option[1]} if option and option[1] is not None else {}
            result = rescore_run(run, **scoring)
        except (EvalError, OSError, json.JSONDecodeError) as err:
            print(f"error: {run}: {err}", file=sys.stderr)
            return 2
        print(f"{run}:\n{markdown_table([result])}")
    return 0


def run_eval_command(args: argparse.Namespace, make_answer_fn: MakeAnswerFn) -> int:
    """Build the task, run every configuration, print the table; 2 on a bad input, else 0."""
    try:
        configurations = guard_configurations(args.guard, args.grid)
        validate = getattr(make_answer_fn, "validate_spec", None)  # the library's spec check, if it has one
        for spec in configurations.values() if validate is not None else ():
            validate(spec)  # a bad third configuration fails before the first one runs, and before data loads
        resolve_data(args, getattr(args, "default_split", "val2014"))
        shard = current_shard()
        task = build_pope_task(args, shard.is_main) if args.eval_task == "pope" else build_chair_task(args)
        options = parse_options(args.opt)
        if shard.count > 1:
            options.setdefault("device", shard.device)

        def factory(spec: str) -> Callable[[], AnswerFn]:
            return lambda: make_answer_fn(args.model, spec, **options)

        run_kwargs = dict(
            batch_size=args.batch_size, seed=args.seed, bootstrap_samples=args.bootstrap, progress=not args.no_progress
        )
        result = run_grid(
            task,
            {name: factory(spec) for name, spec in configurations.items()},
            args.out,
            run_info=_run_info(args),
            shard=shard,
            **run_kwargs,
        )
        if result is not None:
            print(f"results: {args.out}", file=sys.stderr)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def eval_main(argv: Sequence[str], make_answer_fn: MakeAnswerFn, prog: str = "lvlm-guard", **defaults: Any) -> int:
    """Parse `argv` (starting with "eval") and run it: the same path as the real CLI, for tests.

    `defaults` go to `add_eval_subcommand` (default_coco_root, default_split).
    """
    parser = argparse.ArgumentParser(prog=prog)
    add_eval_subcommand(parser.add_subparsers(dest="command", required=True), make_answer_fn, **defaults)
    args = parser.parse_args(list(argv))
    return args.func(args)
