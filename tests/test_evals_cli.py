"""`eval pope|chair` end to end with a fake make_answer_fn, and two real processes vs one."""

from __future__ import annotations

import json

import pytest
from evals_fixture import fake_answer_fn, file_name, write_coco

from evals.cli import eval_main, guard_configurations
from evals.errors import GridSpecError
from evals.pope.files import PopeQuestion, write_pope_file


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"))


class FakeFactory:
    """make_answer_fn(model, guard, **opts) that remembers how it was called."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, guard, **opts):
        self.calls.append((model, guard, opts))
        return fake_answer_fn


def common(coco, out, *extra):
    return ["--model", "fake/model", "--coco-root", str(coco), "--out", str(out), "--no-progress", *extra]


def test_guard_and_grid_specs():
    assert guard_configurations("pai:alpha=0.5,var", None) == {"pai:alpha=0.5,var": "pai:alpha=0.5,var"}
    assert guard_configurations(None, "none,pai,pai+var") == {"none": "none", "pai": "pai", "pai+var": "pai,var"}
    with pytest.raises(GridSpecError, match="twice"):
        guard_configurations(None, "pai,pai")


def test_pope_grid_from_coco(coco, tmp_path, capsys):
    factory = FakeFactory()
    argv = [
        "eval",
        "pope",
        *common(coco, tmp_path, "--grid", "none,pai+var", "--num-images", "6", "--opt", "dtype=bf16"),
    ]
    assert eval_main(argv, factory) == 0
    assert factory.calls == [("fake/model", "none", {"dtype": "bf16"}), ("fake/model", "pai,var", {"dtype": "bf16"})]
    table = capsys.readouterr().out
    assert "| metric | none | pai+var |" in table and (tmp_path / "grid.md").read_text() == table.rstrip("\n") + "\n"
    for split in ("random", "popular", "adversarial"):
        assert len((tmp_path / "questions" / f"coco_pope_{split}.json").read_text().splitlines()) == 36
    results = json.loads((tmp_path / "pai+var" / "results.json").read_text())
    assert results["guard"] == "pai,var" and results["config"]["task_config"]["source"] == "built"
    assert eval_main(argv, factory) == 0 and len(factory.calls) == 2  # resumed: nothing left, no model built


def test_pope_official_format_file(coco, tmp_path):
    questions = [
        PopeQuestion(1, file_name(1), "Is there a dog in the image?", "yes"),
        PopeQuestion(2, file_name(1), "Is there a car in the image?", "no"),
        PopeQuestion(3, file_name(4), "Is there an orange in the image?", "no"),
    ]
    pope_file = write_pope_file(questions, tmp_path / "coco_pope_adversarial.json")
    out = tmp_path / "out"
    assert eval_main(["eval", "pope", *common(coco, out, "--pope-file", str(pope_file))], FakeFactory()) == 0
    results = json.loads((out / "none" / "results.json").read_text())
    assert list(results["metrics"]) == ["adversarial"] and results["n_items"] == {"adversarial": 3}
    records = [json.loads(line) for line in (out / "none" / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["adversarial/1", "adversarial/2", "adversarial/3"]


def test_chair_run(coco, tmp_path):
    argv = ["eval", "chair", *common(coco, tmp_path, "--num-images", "8", "--limit", "5", "--max-new-tokens", "64")]
    assert eval_main(argv, FakeFactory()) == 0
    results = json.loads((tmp_path / "none" / "results.json").read_text())
    assert results["n_items"] == {"all": 5}
    assert set(results["metrics"]["all"]) == {"chair_s", "chair_i", "recall", "length"}
    assert results["config"]["task_config"]["max_new_tokens"] == 64
    assert results["config"]["task_config"]["prompt"] == "Please describe this image in detail."
    assert results["config"]["task_config"]["ground_truth"] == "instances+captions"
    argv += ["--ground-truth", "instances", "--out", str(tmp_path / "instances_only")]
    assert eval_main(argv, FakeFactory()) == 0
    results = json.loads((tmp_path / "instances_only" / "none" / "results.json").read_text())
    assert results["config"]["task_config"]["ground_truth"] == "instances"


def test_default_coco_root(coco, tmp_path, capsys):
    argv = [
        "eval",
        "chair",
        "--model",
        "m",
        "--out",
        str(tmp_path),
        "--num-images",
        "8",
        "--limit",
        "2",
        "--no-progress",
    ]
    assert eval_main(argv, FakeFactory(), default_coco_root=coco) == 0
    assert eval_main(argv, FakeFactory()) == 2  # no default, not the embedded model: --coco-root is required
    assert "--coco-root is required for --model 'm'" in capsys.readouterr().err


def test_the_embedded_model_finds_its_world_without_coco_root(tmp_path):
    from lvlm_guard.embedded.world.coco_format import ensure_world

    argv = ["eval", "chair", "--model", "tiny-coco", "--out", str(tmp_path), "--num-images", "4", "--limit", "2",
            "--no-progress", "--ground-truth", "instances"]  # fmt: skip
    assert eval_main(argv, FakeFactory()) == 0
    results = json.loads((tmp_path / "none" / "results.json").read_text())
    assert results["config"]["task_config"]["coco_split"] == "test"
    records = [json.loads(line) for line in (tmp_path / "none" / "records.jsonl").read_text().splitlines()]
    world_images = {p.name for p in ensure_world("test").rglob("*.jpg")} | {p.name for p in ensure_world("test").rglob("*.png")}
    assert records and all(r["image"].split("/")[-1] in world_images for r in records)


def test_a_refused_resume_changes_nothing_on_disk(coco, tmp_path, capsys):
    first = ["eval", "pope", *common(coco, tmp_path, "--grid", "none,pai", "--num-images", "6", "--limit", "2")]
    assert eval_main(first, FakeFactory()) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    factory = FakeFactory()
    other = ["eval", "pope", *common(coco, tmp_path, "--grid", "none,pai", "--num-images", "5", "--limit", "2")]
    assert eval_main(other, factory) == 2
    assert "holds another run" in capsys.readouterr().err and factory.calls == []
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # question files too


def test_a_bad_grid_entry_fails_before_any_configuration_runs(coco, tmp_path):
    class Checked(FakeFactory):
        def validate_spec(self, spec):
            if "bad" in spec:
                raise GridSpecError(f"bad spec {spec!r}")

    factory = Checked()
    argv = ["eval", "pope", *common(coco, tmp_path / "out", "--grid", "none,pai,bad", "--num-images", "6")]
    assert eval_main(argv, factory) == 2
    assert factory.calls == [] and not (tmp_path / "out").exists()


def test_pope_with_one_image_names_the_minimum(coco, tmp_path, capsys):
    argv = ["eval", "pope", *common(coco, tmp_path, "--num-images", "1")]
    assert eval_main(argv, FakeFactory()) == 2
    assert "POPE needs at least 2 images" in capsys.readouterr().err


def test_bad_layout_is_reported(tmp_path, capsys):
    assert eval_main(["eval", "chair", *common(tmp_path / "nowhere", tmp_path / "out")], FakeFactory()) == 2
    assert "does not exist" in capsys.readouterr().err


def _launched(argv):
    from accelerate.state import PartialState

    PartialState._reset_state()  # a forked child must not inherit a parent's single-process state
    assert eval_main(argv, FakeFactory()) == 0


def test_two_processes_equal_one(coco, tmp_path):
    from accelerate import debug_launcher

    def argv(out):
        return ["eval", "pope", *common(coco, out, "--num-images", "6", "--batch-size", "4")]

    assert eval_main(argv(tmp_path / "one"), FakeFactory()) == 0
    debug_launcher(_launched, args=(argv(tmp_path / "two"),), num_processes=2)
    shards = sorted(p.name for p in (tmp_path / "two" / "none" / "records").iterdir())
    assert shards == ["shard-000-of-002.jsonl", "shard-001-of-002.jsonl"]
    one, two = (tmp_path / name / "none" for name in ("one", "two"))
    assert (two / "records.jsonl").read_bytes() == (one / "records.jsonl").read_bytes()
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert r2["config"]["num_processes"] == 2 and r1["metrics"] == r2["metrics"]


def test_chair_records_sampled_ids_and_vocabulary(coco, tmp_path):
    argv = ["eval", "chair", *common(coco, tmp_path, "--num-images", "6", "--seed", "3", "--vocabulary", "extended")]
    assert eval_main(argv, FakeFactory()) == 0
    results = json.loads((tmp_path / "none" / "results.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "none" / "records.jsonl").read_text().splitlines()]
    ids = results["config"]["task_config"]["image_ids"]
    assert len(ids) == len(set(ids)) == 6 and ids == [r["reference"]["image_id"] for r in records]
    assert results["config"]["scoring"] == {"vocabulary": "extended", "chair_i": "every mention"}
    other_seed = ["eval", "chair", *common(coco, tmp_path / "s4", "--num-images", "6", "--seed", "4")]
    assert eval_main(other_seed, FakeFactory()) == 0
    ids4 = json.loads((tmp_path / "s4" / "none" / "results.json").read_text())["config"]["task_config"]["image_ids"]
    assert sorted(ids4) != sorted(ids)  # 6 of 8 images: two seeds pick different sets


def test_pope_ground_truth_from_captions(coco, tmp_path):
    def questions(extra, out):
        argv = ["eval", "pope", *common(coco, out, "--num-images", "7", "--pope-splits", "random", *extra)]
        assert eval_main(argv, FakeFactory()) == 0
        lines = (out / "questions" / "coco_pope_random.json").read_text().splitlines()
        return {(q["image"], q["text"]): q["label"] for q in map(json.loads, lines)}

    captions = questions(["--pope-ground-truth", "instances+captions"], tmp_path / "caps")
    # image 7 has 2 annotated categories and a bench in its reference captions: with captions it has
    # the 3 positives POPE asks for, and the bench is one of them
    assert captions[("COCO_val2014_000000000007.png", "Is there a bench in the image?")] == "yes"
    only = ["eval", "pope", *common(coco, tmp_path / "inst", "--num-images", "7", "--pope-splits", "random")]
    assert eval_main(only, FakeFactory()) == 2  # from the annotations alone only 6 images qualify
    results = json.loads((tmp_path / "caps" / "none" / "results.json").read_text())
    assert results["config"]["task_config"]["ground_truth"] == "instances+captions"
    assert results["config"]["scoring"] == {"answer_rule": "official"}


def test_rescore_reproduces_then_applies_new_rules(coco, tmp_path):
    argv = ["eval", "chair", *common(coco, tmp_path, "--num-images", "8")]
    assert eval_main(argv, FakeFactory()) == 0
    run = tmp_path / "none"
    before = json.loads((run / "results.json").read_text())
    assert eval_main(["eval", "rescore", str(run)], FakeFactory()) == 0
    same = json.loads((run / "results.json").read_text())
    assert same["metrics"] == before["metrics"] and same["rescored"]["previous_metrics"] == before["metrics"]
    assert same["command"] == before["command"]  # what produced the outputs is kept
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    for r in records:
        r["output"] = "A mug and a mug."  # no image has a cup in every reference: ours counts mugs, the original not
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert eval_main(["eval", "rescore", str(run)], FakeFactory()) == 0
    original = json.loads((run / "results.json").read_text())
    assert original["counts"]["all"]["mentioned"] == 0
    assert eval_main(["eval", "rescore", str(run), "--vocabulary", "extended"], FakeFactory()) == 0
    extended = json.loads((run / "results.json").read_text())
    assert extended["counts"]["all"]["mentioned"] == 16 and extended["config"]["scoring"]["vocabulary"] == "extended"
    assert eval_main(["eval", "rescore", str(tmp_path / "nothing")], FakeFactory()) == 2
