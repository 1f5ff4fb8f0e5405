"""The lvlm-guard command line on a tiny saved model."""

from __future__ import annotations

import pytest
from PIL import Image
from tiny_models import tiny_llava

from lvlm_guard import cli


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llava")
    model, processor = tiny_llava()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_generate_prints_guarded_and_unguarded(saved_model, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(image)
    code = cli.main(
        [
            "generate",
            "--model",
            str(saved_model),
            "--image",
            str(image),
            "--prompt",
            "what is this ?",
            "--guard",
            "pai:gamma=none",
            "--max-new-tokens",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "unguarded:" in out and "guarded:" in out and "[pai:gamma=none]" in out


def test_errors_exit_with_code_2_and_a_message(tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (30, 20)).save(image)
    code = cli.main(["generate", "--model", str(tmp_path / "missing"), "--image", str(image), "--prompt", "hi"])
    assert code == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--guard", "pai:alpha=abc"], "pai: alpha='abc' is not allowed; alpha must be a number or none"),
        (["--guard", "exit:threshold=7"], "threshold must be in [0, 1]"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--image", "nowhere.png"], "--image 'nowhere.png': no such file"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch, argv, message):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("lvlm_guard.loading.load", refuse)
    image = tmp_path / "x.png"
    Image.new("RGB", (30, 20)).save(image)
    base = {"--model": "tiny-coco", "--image": str(image), "--prompt": "hi", "--guard": "pai", "--max-new-tokens": "4"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    code = cli.main(["generate", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_guard_none_answers_once(saved_model, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(image)
    argv = ["generate", "--model", str(saved_model), "--image", str(image), "--prompt", "what ?", "--guard", "none"]
    assert cli.main([*argv, "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("unguarded:") == 1 and "guarded:   " not in out


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from lvlm_guard.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_answer_fn_attaches_per_batch_and_leaves_the_model_clean(saved_model):
    answer_pai = cli.make_answer_fn(str(saved_model), "pai:gamma=none")
    answer_none = cli.make_answer_fn(str(saved_model), "none")
    image = Image.new("RGB", (30, 20), (10, 10, 200))
    a = answer_pai([image, image], ["what is this ?", "is there a dog ?"], 4)
    b = answer_none([image], ["what is this ?"], 4)
    assert len(a) == 2 and len(b) == 1 and all(isinstance(t, str) for t in a + b)
    model, _ = cli._LOADED.get(str(saved_model))  # the same key the answer functions used
    assert not hasattr(model, "_lvlm_guard")


def _fake_answers(model, guard, **options):
    from evals_fixture import fake_answer_fn

    return fake_answer_fn


_fake_answers.validate_spec = cli._validate_spec


def test_main_job_runs_the_chosen_guards_and_marks_exit_as_a_speed_method(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "make_answer_fn", _fake_answers)
    out = tmp_path / "main"
    argv = ["main", "--guards", "pai,exit", "--num-images", "2", "--chair-max-new-tokens", "4", "--out", str(out)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    for bench in ("pope", "chair"):
        assert sorted(p.name for p in (out / bench).iterdir() if (p / "results.json").is_file()) == ["exit", "none", "pai"]
        assert "exit is a speed method" in (out / bench / "grid.md").read_text()
    assert "main job: " in captured.err and f"results in {out}" in captured.err
    assert "main job (3 configurations" in captured.err  # the overall progress line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--guards", "pai:alpha=abc"], "alpha='abc' is not allowed"),
        (["--guards", "nope"], "unknown guard 'nope'"),
        (["--num-images", "1"], "--num-images must be >= 2"),
    ],
)
def test_main_job_checks_its_arguments_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(cli, "make_answer_fn", _fake_answers)
    assert cli.main(["main", *argv, "--out", str(tmp_path / "m")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "m").exists()


@pytest.mark.parametrize(("raised", "code", "word"), [(KeyboardInterrupt, 130, "interrupted"), (cli.Terminated, 143, "terminated")])
def test_an_interrupted_run_says_where_results_are_and_that_rerunning_resumes(tmp_path, monkeypatch, capsys, raised, code, word):
    def stop(model, guard, **options):
        def answer(images, prompts, max_new_tokens):
            raise raised

        return answer

    monkeypatch.setattr(cli, "make_answer_fn", stop)
    out = tmp_path / "main"
    assert cli.main(["main", "--guards", "pai", "--num-images", "2", "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert word in err and str(out) in err and "rerun the same command to resume" in err and "Traceback" not in err
