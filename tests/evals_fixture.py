"""A tiny COCO-format split on disk for the evals tests: instances, captions and 8x8 PNGs.

Not a test module itself (no `test_` prefix); the evals tests import it.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from PIL import Image

CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 8: "truck", 15: "bench", 17: "cat", 18: "dog", 34: "frisbee",
    47: "cup", 51: "bowl", 62: "chair", 63: "couch", 67: "dining table", 72: "tv",
}  # fmt: skip
#: image id -> annotated categories (one annotation each; "person" twice in image 6)
OBJECTS: dict[int, list[str]] = {
    1: ["person", "dog", "frisbee"],
    2: ["person", "dog", "car"],
    3: ["person", "car", "truck"],
    4: ["cup", "bowl", "dining table"],
    5: ["chair", "cup", "dining table"],
    6: ["cat", "couch", "tv", "person", "person"],
    7: ["bicycle", "person"],
    8: [],
}
CAPTIONS: dict[int, list[str]] = {
    1: ["A man throws a frisbee to his dog.", "A dog catches a frisbee."],
    2: ["A woman walks a dog near a car."],
    3: ["Cars and trucks on a street with people."],
    4: ["A bowl and a cup on a dining table."],
    5: ["A chair next to a table with a mug."],
    6: ["A cat on a couch in front of a television."],
    7: ["A man rides a bicycle past a bench."],  # bench only in the captions
    8: ["An empty white wall."],
}


def file_name(image_id: int) -> str:
    return f"COCO_val2014_{image_id:012d}.png"


def write_coco(root: Path, split: str = "val2014") -> Path:
    """Write the split under `root` in real COCO layout; returns `root`."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    by_name = {name: cid for cid, name in CATEGORIES.items()}
    images, annotations, captions = [], [], []
    for image_id, names in OBJECTS.items():
        images.append({"id": image_id, "file_name": file_name(image_id), "width": 8, "height": 8})
        colour = (image_id * 30 % 256, image_id * 70 % 256, image_id * 110 % 256)
        Image.new("RGB", (8, 8), colour).save(root / split / file_name(image_id))
        for name in names:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": by_name[name]})
        for text in CAPTIONS[image_id]:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
    categories = [{"id": cid, "name": name, "supercategory": "x"} for cid, name in CATEGORIES.items()]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    (root / "annotations" / f"captions_{split}.json").write_text(
        json.dumps({"images": images, "annotations": captions})
    )
    return root


_POPE_ANSWERS = ("Yes, there is.", "No, there is not.", "There is a dog but no cat.", "I do not see one.", "Yes.")
_DESCRIPTIONS = (
    "A man throws a frisbee to a dog while a cat watches.",
    "Two cups on a dining table next to a bowl.",
    "A red car and a truck parked near a bench.",
    "A cat sleeps on a couch.",
)


def fake_answer_fn(images: list[Image.Image], prompts: list[str], max_new_tokens: int) -> list[str]:
    """Deterministic stand-in for a model: the answer depends only on the image and the prompt."""
    answers = []
    for image, prompt in zip(images, prompts):
        h = zlib.crc32(prompt.encode() + image.tobytes())
        pool = _POPE_ANSWERS if prompt.startswith("Is there") else _DESCRIPTIONS
        answers.append(pool[h % len(pool)])
    return answers


class FailingAnswerFn:
    """Answers like `fake_answer_fn` for `fail_after` calls, then raises (a killed run)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.calls = 0
        self.prompts_answered = 0

    def __call__(self, images, prompts, max_new_tokens):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.prompts_answered += len(prompts)
        return fake_answer_fn(images, prompts, max_new_tokens)
