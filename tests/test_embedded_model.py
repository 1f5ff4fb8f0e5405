"""The shipped tiny-coco model loads offline and answers existence questions in the trained format."""

from __future__ import annotations

import json
import re

import pytest

import lvlm_guard as lg
from lvlm_guard.embedded.world.coco_format import ensure_world

ANSWER = re.compile(r"^(Yes, there is an? |No, there is no )[a-z ]+ in the image\.$")


@pytest.fixture(scope="module")
def model_and_world(tmp_path_factory):
    root = ensure_world("test", tmp_path_factory.mktemp("world"), size=12, progress=False)
    model, processor = lg.load("tiny-coco", dtype="float32", local_files_only=True)
    return model, processor, root


def test_yes_no_answers_have_the_trained_format_and_are_mostly_right(model_and_world):
    model, processor, root = model_and_world
    instances = json.loads((root / "annotations" / "instances_test.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    present: dict[int, set[str]] = {}
    for ann in instances["annotations"]:
        present.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    images, prompts, truth = [], [], []
    for info in instances["images"]:
        objects = present.get(info["id"], set())
        if not objects:
            continue
        absent = sorted(set(names.values()) - objects)[info["id"] % 7]
        for name, label in ((sorted(objects)[0], "yes"), (absent, "no")):
            images.append(root / "test" / info["file_name"])
            prompts.append(f"Is there a {name} in the image?")
            truth.append(label)
    guard = lg.attach(model, processor, [])
    try:
        texts = guard.generate(images, prompts, max_new_tokens=16).texts
    finally:
        guard.detach()
    assert [t for t in texts if not ANSWER.match(t)] == []
    said = ["yes" if t.startswith("Yes") else "no" for t in texts]
    accuracy = sum(a == b for a, b in zip(said, truth)) / len(truth)
    assert accuracy >= 0.7, (accuracy, list(zip(prompts, texts)))
