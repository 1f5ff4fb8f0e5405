"""Running a task: batches to the model, every output checkpointed, shards merged, results written.

Output folder of one run:

    config.json            what is being run (task settings, model, guard, digest of the items);
                           a resumed run must match it, or it stops with ResumeMismatchError
    records/shard-*.jsonl  per-process append-only logs of outputs (see `evals.records`)
    records.jsonl          all outputs merged in item order (main process)
    scores.jsonl           per-item counts and details (e.g. CHAIR's hallucinated objects)
    results.json           metrics with bootstrap CIs, config, versions, timing
    table.md               the metrics as a markdown table

Resuming reads every log under records/, whatever number of processes wrote it, so a run may be
resumed with another process count. Batch size and process count are not part of the identity:
they change how items are grouped, not what is asked (with a real model, batching with padding
can still change outputs in the last bits; use batch size 1 for exact reproduction).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from evals.bootstrap import BOOTSTRAP_SAMPLES, CONFIDENCE
from evals.errors import AnswerCountError, CocoLayoutError, ResumeMismatchError
from evals.parallel import ProcessShard, current_shard
from evals.progress import current as job_progress_now
from evals.progress import item_cost
from evals.records import RecordWriter, read_record_dir, write_records_atomically
from evals.results import EvalResult, environment_versions, write_json
from evals.scoring import require_outputs, score_items, summarize
from evals.table import markdown_table
from evals.task import AnswerFn, EvalItem, ItemScore, Task

RECORDS_DIR = "records"


def items_digest(items: Sequence[EvalItem]) -> str:
    """SHA-256 of what is asked: ids, groups, images, prompts and references, in order."""
    digest = hashlib.sha256()
    for item in items:
        row = [item.item_id, item.group, item.image_file, item.prompt, dict(item.reference)]
        digest.update(json.dumps(row, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def run_identity(task: Task, run_info: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the configuration that must not change when a run is resumed."""
    identity = {
        "task": task.name,
        "task_config": dict(task.config),
        "run": dict(run_info),
        "items": len(task.items),
        "items_digest": items_digest(task.items),
    }
    return json.loads(json.dumps(identity, default=str))  # tuples -> lists, as read back from disk


def check_identity(out_dir: Path, identity: Mapping[str, Any], write: bool) -> None:
    """Compare with config.json of an earlier run in `out_dir`; write it when there is none."""
    path = out_dir / "config.json"
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != identity:
            keys = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            detail = "; ".join(f"{k}: {previous.get(k)!r} -> {identity.get(k)!r}" for k in keys)
            raise ResumeMismatchError(f"{out_dir} holds another run ({detail}); use a new --out or delete it")
    elif write:
        write_json(identity, path)


def load_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise CocoLayoutError(f"image {path} does not exist") from err


def _check_images(items: Sequence[EvalItem]) -> None:
    missing = sorted({item.image_path for item in items if not Path(item.image_path).is_file()})
    if missing:
        raise CocoLayoutError(f"{len(missing)} images are missing, e.g. {missing[:3]}")


def _record(item: EvalItem, output: str) -> dict[str, Any]:
    return {
        "id": item.item_id,
        "group": item.group,
        "image": item.image_file,
        "prompt": item.prompt,
        "output": output,
        "reference": dict(item.reference),
    }


def pending_items(task: Task, out_dir: Path, shard: ProcessShard) -> list[EvalItem]:
    """This shard's items that no log under out_dir/records holds yet."""
    done = read_record_dir(out_dir / RECORDS_DIR)
    return [item for item in shard.take(task.items) if item.item_id not in done]


def generate(
    task: Task,
    answer_fn: AnswerFn,
    out_dir: Path,
    shard: ProcessShard,
    *,
    batch_size: int = 1,
    progress: bool = True,
    desc: str = "",
) -> int:
    """Answer this shard's pending items in batches, logging each batch durably; returns how many."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    writer = RecordWriter(out_dir / RECORDS_DIR / shard.log_name)  # cuts a partial tail first
    pending = pending_items(task, out_dir, shard)
    _check_images(pending)
    total = len(shard.take(task.items))
    job = job_progress_now()
    cost = item_cost(task.max_new_tokens)
    if job is not None and shard.is_main:
        job.skip((total - len(pending)) * cost)
    with (
        writer,
        tqdm(
            total=total,
            initial=total - len(pending),
            unit="item",
            desc=desc or task.name,
            disable=not (progress and shard.is_main),
            dynamic_ncols=True,
            file=sys.stderr,
        ) as bar,
    ):
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            loaded: dict[str, Image.Image] = {}  # POPE asks six questions per image: read it once
            for item in batch:
                if item.image_path not in loaded:
                    loaded[item.image_path] = load_rgb(item.image_path)
            images = [loaded[item.image_path] for item in batch]
            outputs = answer_fn(images, [item.prompt for item in batch], task.max_new_tokens)
            if not isinstance(outputs, (list, tuple)) or len(outputs) != len(batch):
                got = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
                raise AnswerCountError(f"AnswerFn returned {got} answers for {len(batch)} prompts")
            writer.append(_record(item, str(output)) for item, output in zip(batch, outputs))
            bar.update(len(batch))
            if job is not None and shard.is_main:
                job.advance(len(batch) * cost)
    return len(pending)


def merge_records(task: Task, out_dir: Path) -> list[dict[str, Any]]:
    """All logs merged in item order into records.jsonl; raises if an item has no output."""
    found = read_record_dir(out_dir / RECORDS_DIR)
    require_outputs(task, found)
    merged = [found[item.item_id] for item in task.items]
    write_records_atomically(merged, out_dir / "records.jsonl")
    return merged


def write_outcome(
    task: Task, scores: Sequence[ItemScore], result: EvalResult, out_dir: Path, report: Mapping[str, Any]
) -> None:
    """scores.jsonl (per item), results.json (`result` plus `report`) and table.md of a scored run."""
    write_records_atomically(
        ({"id": item.item_id, "group": item.group, "counts": dict(zip(task.count_names, s.counts)), **s.details}
         for item, s in zip(task.items, scores)),
        out_dir / "scores.jsonl",
    )  # fmt: skip
    write_json({**result.as_dict(), **report}, out_dir / "results.json")
    (out_dir / "table.md").write_text(markdown_table([result]), encoding="utf-8")


def run_task(
    task: Task,
    answer_fn: AnswerFn,
    out_dir: str | Path,
    *,
    name: str = "default",
    run_info: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    seed: int = 0,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    shard: ProcessShard | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> EvalResult | None:
    """Run (or resume) `task` into `out_dir`; the main process returns the result, others None.

    `run_info` (model id, guard, ...) is part of the run's identity and recorded. `seed` seeds the
    bootstrap; the task's own sampling seed is in its config.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shard = shard or current_shard()
    run_info = {"name": name, **(run_info or {})}
    identity = run_identity(task, run_info)
    check_identity(out_dir, identity, write=shard.is_main)

    started = time.perf_counter()
    generated = generate(
        task, answer_fn, out_dir, shard, batch_size=batch_size, progress=progress, desc=f"{task.name}:{name}"
    )
    seconds = time.perf_counter() - started
    shard.barrier()
    if not shard.is_main:
        shard.barrier()
        return None
    try:
        records = merge_records(task, out_dir)
        scores = score_items(task, {r["id"]: r["output"] for r in records})
        result = summarize(
            task,
            scores,
            name=name,
            out_dir=out_dir,
            seed=seed,
            bootstrap_samples=bootstrap_samples,
            confidence=confidence,
        )
        write_outcome(
            task,
            scores,
            result,
            out_dir,
            {
                "model": run_info.get("model"),
                "guard": run_info.get("guard"),
                "seed": seed,
                "config": {
                    **identity,
                    "batch_size": batch_size,
                    "scoring": dict(task.scoring),
                    "num_processes": shard.count,
                    "bootstrap_samples": bootstrap_samples,
                    "confidence": confidence,
                },
                "command": list(command) if command is not None else sys.argv,
                "versions": environment_versions(),
                "timing": {
                    "items_this_session_main_process": generated,
                    "seconds_this_session_main_process": round(seconds, 3),
                    "items_per_second": round(generated / seconds, 4) if generated and seconds > 0 else None,
                },
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
    finally:
        shard.barrier()
    return result
