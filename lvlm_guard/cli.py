"""The `lvlm-guard` command line.

lvlm-guard generate --image cat.jpg --prompt "Describe the image." --guard pai
lvlm-guard eval pope --model tiny-coco --grid none,pai --out runs/pope
lvlm-guard list
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lvlm_guard.errors import GuardError


class InvalidArgumentError(GuardError, ValueError):
    """A command-line argument outside what the command accepts."""

DEFAULT_MODEL = "tiny-coco"


class LoadedModels:
    """Loads each model once per process; evals of several guards share it."""

    def __init__(self) -> None:
        self._models: dict[tuple, tuple] = {}

    def get(self, model: str, **load_options):
        from lvlm_guard.loading import load

        key = (model, tuple(sorted((k, str(v)) for k, v in load_options.items())))
        if key not in self._models:
            self._models[key] = load(model, **load_options)
        return self._models[key]


_LOADED = LoadedModels()


def make_answer_fn(model: str, guard: str, device: str | None = None, **load_options):
    """An eval AnswerFn: batched guarded generation with `guard` (a spec such as `pai,var`).

    The guard is attached for each batch and detached after it, so several configurations can
    share one loaded model in a grid.
    """
    import os

    from lvlm_guard.engine.guard import attach
    from lvlm_guard.methods import parse_guard_spec
    from lvlm_guard.threads import configure_threads

    interventions = parse_guard_spec(guard)
    configure_threads(workers=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # processes of this host share its CPUs
    if device is not None:
        load_options.setdefault("device_map", device)
    loaded_model, processor = _LOADED.get(model, **load_options)

    def answer(images, prompts, max_new_tokens):
        g = attach(loaded_model, processor, interventions)
        try:
            return g.generate(images=images, prompts=prompts, max_new_tokens=max_new_tokens).texts
        finally:
            g.detach()

    return answer


def _validate_spec(spec: str) -> None:
    from lvlm_guard.methods import parse_guard_spec

    parse_guard_spec(spec)


make_answer_fn.validate_spec = _validate_spec  # evals checks every grid entry before running any


def _generate(args: argparse.Namespace) -> int:
    from lvlm_guard.engine.guard import attach
    from lvlm_guard.loading import load
    from lvlm_guard.methods import parse_guard_spec
    from lvlm_guard.threads import configure_threads

    interventions = parse_guard_spec(args.guard)  # a bad spec fails before the model loads
    if args.max_new_tokens < 1:
        raise InvalidArgumentError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not Path(args.image).is_file():
        raise InvalidArgumentError(f"--image {args.image!r}: no such file")
    configure_threads()
    model, processor = load(args.model, dtype=args.dtype, device_map=args.device_map)
    guard = attach(model, processor, interventions)
    images = [args.image] * len(args.prompt)
    try:
        guarded = guard.generate(images, args.prompt, max_new_tokens=args.max_new_tokens)
        if not interventions:  # nothing to compare: one answer
            for prompt, text in zip(args.prompt, guarded.texts):
                print(f"prompt:    {prompt}\nunguarded: {text}\n")
            return 0
        with guard.disabled():
            plain = guard.generate(images, args.prompt, max_new_tokens=args.max_new_tokens)
    finally:
        guard.detach()
    for prompt, g, p in zip(args.prompt, guarded.texts, plain.texts):
        print(f"prompt:    {prompt}\nunguarded: {p}\nguarded:   {g}  [{args.guard}]\n")
    return 0


def _main_job(args: argparse.Namespace) -> int:
    """Baseline vs the chosen guards (default: every registered one), POPE and CHAIR, on the
    embedded default's test split, with one overall progress line and the total time at the end."""
    import time

    from evals.cli import eval_main
    from evals.pope.build import POPE_MIN_IMAGES, POPE_PER_IMAGE, POPE_SPLITS
    from evals.pope.task import POPE_MAX_NEW_TOKENS
    from evals.progress import item_cost, job_progress
    from lvlm_guard.embedded.world.coco_format import ensure_world
    from lvlm_guard.methods import available_methods, parse_guard_spec

    guards = available_methods() if args.guards is None else [g.strip() for g in args.guards.split(",") if g.strip()]
    # every name and setting checked before any work ('+' stacks methods in a grid entry)
    parsed = [i for spec in guards for i in parse_guard_spec(spec.replace("+", ","))]
    if args.num_images < POPE_MIN_IMAGES:
        raise InvalidArgumentError(f"--num-images must be >= {POPE_MIN_IMAGES} (POPE needs two images), got {args.num_images}")
    grid = ",".join(["none", *[g for g in guards if g != "none"]])
    configurations = grid.count(",") + 1
    pope_work = configurations * args.num_images * POPE_PER_IMAGE * 2 * len(POPE_SPLITS) * item_cost(POPE_MAX_NEW_TOKENS)
    chair_work = configurations * args.num_images * item_cost(args.chair_max_new_tokens)
    root = ensure_world(args.split)
    common = [
        "--model", args.model, "--grid", grid, "--coco-root", str(root), "--split", args.split,
        "--num-images", str(args.num_images), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
    ]  # fmt: skip
    chair = ["--max-new-tokens", str(args.chair_max_new_tokens), "--ground-truth", "instances"]
    started = time.perf_counter()
    with job_progress(pope_work + chair_work, desc=f"main job ({configurations} configurations x POPE, CHAIR)"):
        code = eval_main(["eval", "pope", *common, "--out", str(args.out / "pope")], make_answer_fn)
        if not code:
            code = eval_main(["eval", "chair", *common, *chair, "--out", str(args.out / "chair")], make_answer_fn)
    speed = sorted({i.name for i in parsed if i.purpose == "speed"})
    if not code and speed:
        note = (
            f"\nNote: {', '.join(speed)} is a speed method (visual tokens leave the model early): its rows show the "
            "quality it costs, not a reduction of hallucination.\n"
        )
        print(note)
        for bench in ("pope", "chair"):
            table = args.out / bench / "grid.md"
            if table.is_file() and note.strip() not in table.read_text(encoding="utf-8"):
                table.write_text(table.read_text(encoding="utf-8") + note, encoding="utf-8")
    minutes, seconds = divmod(time.perf_counter() - started, 60)
    print(f"main job: {int(minutes)} min {seconds:.0f} s this session; results in {args.out}", file=sys.stderr)
    return code


def _list(args: argparse.Namespace) -> int:
    from lvlm_guard.methods import available_methods, method_presets
    from lvlm_guard.models import supported_architectures

    print("guards:", ", ".join(available_methods()))
    print("architectures:", ", ".join(supported_architectures()))
    print("presets (chosen by the model's family with preset=auto; pick one with e.g. 'pai:preset=repo'):")
    for name in available_methods():
        for preset, values, families in method_presets(name):
            print(f"  {name}:preset={preset}  [{', '.join(families) or 'by name only'}]  {values.describe()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvlm-guard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer prompts about one image, guarded and unguarded side by side")
    gen.add_argument("--model", default=DEFAULT_MODEL)
    gen.add_argument("--image", required=True)
    gen.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    gen.add_argument("--guard", default="pai", help="guard spec, e.g. pai, 'pai:alpha=0.5'")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--dtype", default=None, help="default: float32 on the CPU, bfloat16 on a GPU (as lg.load)")
    gen.add_argument("--device-map", default=None)
    gen.set_defaults(func=_generate)

    job = sub.add_parser("main", help="the main job: baseline vs every guard on POPE and CHAIR (embedded default)")
    job.add_argument("--model", default=DEFAULT_MODEL)
    job.add_argument("--split", default="test")
    job.add_argument("--num-images", type=int, default=50, help="images per benchmark, at least 2 (default 50; protocol: 500)")
    job.add_argument(
        "--guards", default=None, help="guards to compare with the baseline, e.g. pai,var or 'pai+var' (default: every one)"
    )
    job.add_argument("--batch-size", type=int, default=16)
    job.add_argument("--chair-max-new-tokens", type=int, default=512)
    job.add_argument("--seed", type=int, default=0)
    job.add_argument("--out", type=Path, default=Path("runs/main"), help="rerun with the same folder to resume")
    job.set_defaults(func=_main_job)

    lst = sub.add_parser("list", help="available guards, their per-model presets and supported architectures")
    lst.set_defaults(func=_list)

    try:
        from evals.cli import add_eval_subcommand
    except ImportError:  # evals is part of the package; only a broken install lacks it
        pass
    else:
        add_eval_subcommand(sub, make_answer_fn)
    return parser


class Terminated(Exception):
    """SIGTERM, turned into an exception so that a run stops the way Ctrl-C stops it."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; errors print one line (exit 2); Ctrl-C (130) and SIGTERM (143) say where the
    results are and that rerunning the same command resumes (records are written batch by batch)."""
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args) or 0
    except GuardError as exc:
        print(f"lvlm-guard: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        out = getattr(args, "out", None)
        where = (
            f" Finished batches are saved under {out}; rerun the same command to resume from there." if out else ""
        )
        print(f"\nlvlm-guard: {'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated'}.{where}",
              file=sys.stderr)  # fmt: skip
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
