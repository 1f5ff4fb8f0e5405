"""Runner: checkpointing, resume after a crash, shard merging across processes, bootstrap, grid table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from evals_fixture import FailingAnswerFn, fake_answer_fn, write_coco

from evals.bootstrap import bootstrap_estimates
from evals.coco import find_split, load_split
from evals.errors import AnswerCountError, IncompleteRunError, RecordFormatError, ResumeMismatchError
from evals.grid import run_grid
from evals.parallel import ProcessShard
from evals.pope.build import build_pope_splits
from evals.pope.metrics import pope_metrics
from evals.pope.task import pope_task
from evals.records import RecordWriter, read_records
from evals.runner import run_task


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"))


def make_task(coco, seed=0):
    files = find_split(coco, "val2014")
    questions = build_pope_splits(load_split(files), num_images=6, seed=seed)
    return pope_task(questions, files.image_path, config={"seed": seed})


def run(task, answer_fn, out, **kwargs):
    kwargs = {"batch_size": 4, "bootstrap_samples": 200, "progress": False, "run_info": {"model": "fake"}, **kwargs}
    return run_task(task, answer_fn, out, **kwargs)


def metrics_of(out):
    data = json.loads((out / "results.json").read_text())
    return data["metrics"], data["counts"]


def test_resume_after_crash_loses_and_repeats_nothing(coco, tmp_path):
    task = make_task(coco)
    assert len(task.items) == 108
    run(task, FailingAnswerFn(), tmp_path / "straight")

    crashed = FailingAnswerFn(fail_after=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(task, crashed, tmp_path / "resumed")
    log = tmp_path / "resumed" / "records" / "shard-000-of-001.jsonl"
    assert len(read_records(log)) == 20  # five batches of four, each fsynced
    with open(log, "a") as handle:  # and a line cut by the kill
        handle.write('{"id": "random/21", "out')

    resumed = FailingAnswerFn()
    result = run(task, resumed, tmp_path / "resumed")
    assert resumed.prompts_answered == 108 - 20  # nothing answered twice
    ids = [r["id"] for r in read_records(log)]
    assert len(ids) == len(set(ids)) == 108
    straight_records = (tmp_path / "straight" / "records.jsonl").read_bytes()
    assert (tmp_path / "resumed" / "records.jsonl").read_bytes() == straight_records
    assert metrics_of(tmp_path / "resumed") == metrics_of(tmp_path / "straight")
    assert set(result.metrics) == {"random", "popular", "adversarial"}

    again = FailingAnswerFn()
    run(task, again, tmp_path / "resumed")  # a finished run only re-scores
    assert again.calls == 0


def test_results_json_records_the_run(coco, tmp_path):
    result = run(make_task(coco), fake_answer_fn, tmp_path, seed=5)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["model"] == "fake" and data["seed"] == 5
    assert data["config"]["task_config"]["seed"] == 0 and data["config"]["batch_size"] == 4
    assert data["versions"]["numpy"] == np.__version__
    for group in ("random", "popular", "adversarial"):
        m = data["metrics"][group]["accuracy"]
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
        counts = data["counts"][group]
        assert counts["tp"] + counts["fp"] + counts["tn"] + counts["fn"] == 36
    table = (tmp_path / "table.md").read_text()
    assert "| adversarial f1 (%) |" in table and result.n_items == {"random": 36, "popular": 36, "adversarial": 36}
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 108


def test_resume_with_other_config_is_refused(coco, tmp_path):
    run(make_task(coco), fake_answer_fn, tmp_path)
    with pytest.raises(ResumeMismatchError, match="items_digest"):
        run(make_task(coco, seed=1), fake_answer_fn, tmp_path)
    with pytest.raises(ResumeMismatchError, match="guard"):
        run(make_task(coco), fake_answer_fn, tmp_path, run_info={"model": "fake", "guard": "pai"})


def test_answer_count_checked(coco, tmp_path):
    with pytest.raises(AnswerCountError, match="1 answers for 4 prompts"):
        run(make_task(coco), lambda images, prompts, n: ["yes"], tmp_path)


def test_damaged_record_inside_a_log_is_an_error(tmp_path):
    path = tmp_path / "log.jsonl"
    with RecordWriter(path) as writer:
        writer.append([{"id": "a", "output": "x"}])
    path.write_text(path.read_text() + "garbage\n" + '{"id": "b"}\n')
    with pytest.raises(RecordFormatError, match="log.jsonl:2"):
        read_records(path)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    counts = np.stack(
        [(preds & labels), (preds & ~labels & 1), ((1 - preds) & (1 - labels)), ((1 - preds) & labels)], 1
    )
    a = bootstrap_estimates(counts, pope_metrics, samples=300, seed=1, stream="random")
    b = bootstrap_estimates(counts, pope_metrics, samples=300, seed=1, stream="random")
    assert a == b
    for estimate in a.values():
        assert estimate.low <= estimate.value <= estimate.high and estimate.high - estimate.low < 0.2
    same = bootstrap_estimates(np.tile([1.0, 0, 0, 0], (20, 1)), pope_metrics, samples=50)
    assert same["accuracy"].low == same["accuracy"].high == 1.0


def test_strided_shards_merge_in_item_order(coco, tmp_path):
    """Two shards run one after the other (as two processes would) give the one-process records."""
    task = make_task(coco)
    run(task, fake_answer_fn, tmp_path / "one")
    with pytest.raises(IncompleteRunError, match="54 of 108 pope items have no output"):
        run(task, fake_answer_fn, tmp_path / "two", shard=ProcessShard(index=0, count=2))  # alone: half missing
    second = ProcessShard(index=1, count=2)
    assert run(task, fake_answer_fn, tmp_path / "two", shard=second) is None  # not main: no result
    run(task, fake_answer_fn, tmp_path / "two", shard=ProcessShard(index=0, count=2))
    assert (tmp_path / "two" / "records.jsonl").read_bytes() == (tmp_path / "one" / "records.jsonl").read_bytes()
    assert len(read_records(tmp_path / "two" / "records" / "shard-001-of-002.jsonl")) == 54


def test_grid_table_side_by_side(coco, tmp_path):
    built = []

    def factory(name):
        def build():
            built.append(name)
            return fake_answer_fn if name == "none" else (lambda images, prompts, n: ["No."] * len(prompts))

        return build

    kwargs = {"batch_size": 8, "bootstrap_samples": 100, "progress": False}
    grid = run_grid(make_task(coco), {"none": factory("none"), "say-no": factory("say-no")}, tmp_path, **kwargs)
    assert grid.table_path == tmp_path / "grid.md" and grid.table_path.read_text() == grid.table
    header = grid.table.splitlines()[2]
    assert header == "| metric | none | say-no |"
    yes_row = next(line for line in grid.table.splitlines() if line.startswith("| random yes_ratio (%)"))
    assert yes_row.endswith("| 0.0 [0.0, 0.0] |")  # a model that always says no
    assert built == ["none", "say-no"]
    run_grid(make_task(coco), {"none": factory("none"), "say-no": factory("say-no")}, tmp_path, **kwargs)
    assert built == ["none", "say-no"]  # finished configurations build no model
