"""The lvlm-guard command line on a tiny saved model."""

from __future__ import annotations

import pytest
import torch
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
    code = cli.main(["generate", "--model", str(tmp_path / "missing"), "--image", "x.png", "--prompt", "hi"])
    assert code == 2
    assert "missing" in capsys.readouterr().err


def test_answer_fn_attaches_per_batch_and_leaves_the_model_clean(saved_model):
    answer_pai = cli.make_answer_fn(str(saved_model), "pai:gamma=none")
    answer_none = cli.make_answer_fn(str(saved_model), "none")
    image = Image.new("RGB", (30, 20), (10, 10, 200))
    a = answer_pai([image, image], ["what is this ?", "is there a dog ?"], 4)
    b = answer_none([image], ["what is this ?"], 4)
    assert len(a) == 2 and len(b) == 1 and all(isinstance(t, str) for t in a + b)
    model, _ = cli._LOADED.get(str(saved_model), dtype="bfloat16" if torch.cuda.is_available() else "float32")
    assert not hasattr(model, "_lvlm_guard")
