"""Several named configurations on one task, and one side-by-side table of their metrics.

Each configuration runs (or resumes) in `<out>/<name>/` exactly as a single run would, then the
main process writes `<out>/grid.md` and `<out>/grid.json` and returns the table. Configurations
are given as AnswerFn factories and built lazily, one at a time: a configuration that already
finished loads no model, and each model is released before the next one is built.
"""

from __future__ import annotations

import gc
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.errors import GridSpecError
from evals.parallel import ProcessShard, current_shard
from evals.results import EvalResult, write_json
from evals.runner import check_identity, run_identity, run_task
from evals.table import markdown_table
from evals.task import AnswerFn, LazyAnswerFn, Task

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def folder_name(name: str) -> str:
    """A configuration name as a folder name ("pai:alpha=0.5" -> "pai_alpha=0.5")."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "config"
    return cleaned


@dataclass(frozen=True)
class GridResult:
    results: tuple[EvalResult, ...]
    table: str
    table_path: Path


def _release_accelerator_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_grid_resumable(
    task: Task,
    configurations: Mapping[str, object],
    out_dir: str | Path,
    run_info: Callable[[str], Mapping[str, Any]] | None = None,
) -> None:
    """Raise ResumeMismatchError, before anything is written, if any configuration's folder holds
    another run (a grid whose third configuration would be refused must not first run the others)."""
    for name in configurations:
        info = {"name": name, **(run_info(name) if run_info is not None else {})}
        check_identity(Path(out_dir) / folder_name(name), run_identity(task, info), write=False)


def run_grid(
    task: Task,
    configurations: Mapping[str, Callable[[], AnswerFn]],
    out_dir: str | Path,
    *,
    run_info: Callable[[str], Mapping[str, Any]] | None = None,
    shard: ProcessShard | None = None,
    print_table: bool = True,
    **run_kwargs: Any,
) -> GridResult | None:
    """Run every configuration; the main process returns the results and the table, others None.

    `run_info(name)` gives the recorded identity of a configuration (model id, guard spec);
    `run_kwargs` go to `run_task` (batch_size, seed, bootstrap_samples, progress, ...).
    """
    if not configurations:
        raise GridSpecError("a grid needs at least one configuration")
    folders = {name: folder_name(name) for name in configurations}
    if len(set(folders.values())) != len(folders):
        raise GridSpecError(f"configuration names collide as folder names: {sorted(folders)}")
    out_dir = Path(out_dir)
    shard = shard or current_shard()
    check_grid_resumable(task, configurations, out_dir, run_info)  # a refused resume runs nothing
    results = []
    for name, factory in configurations.items():
        answer_fn = LazyAnswerFn(factory)
        info = dict(run_info(name)) if run_info is not None else {}
        result = run_task(task, answer_fn, out_dir / folders[name], name=name, run_info=info, shard=shard, **run_kwargs)
        answer_fn.release()
        _release_accelerator_memory()
        if result is not None:
            results.append(result)
    if not shard.is_main:
        return None
    table = markdown_table(results)
    table_path = out_dir / "grid.md"
    table_path.write_text(table, encoding="utf-8")
    write_json({"task": task.name, "configurations": [r.as_dict() for r in results]}, out_dir / "grid.json")
    if print_table:
        print(table)
    return GridResult(results=tuple(results), table=table, table_path=table_path)
