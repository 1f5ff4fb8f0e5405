"""POPE question files: one JSON object per line with `question_id`, `image`, `text`, `label`.

This is the format of the official files (AoiDragon/POPE `output/coco/coco_pope_*.json`, a copy in
/work/shared/data/pope) and of the files our builder writes, so either can be run the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from evals.errors import PopeFormatError

_QUESTION = re.compile(r"^Is there an? (?P<object>.+) in the image\?$")


@dataclass(frozen=True)
class PopeQuestion:
    question_id: int
    image: str  # COCO file_name
    text: str
    label: str  # "yes" | "no"

    @property
    def object(self) -> str | None:
        """The object asked about, when the text follows POPE's template."""
        match = _QUESTION.match(self.text.strip())
        return match.group("object") if match else None


def read_pope_file(path: str | Path) -> tuple[PopeQuestion, ...]:
    """Questions of one POPE file, in file order; blank lines are skipped.

    Raises `PopeFormatError` naming the file and line for bad JSON, missing keys, a label other
    than yes/no, or a repeated question id (ids are the resume key).
    """
    path = Path(path)
    questions: list[PopeQuestion] = []
    seen: set[int] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question = PopeQuestion(int(row["question_id"]), str(row["image"]), str(row["text"]), str(row["label"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise PopeFormatError(f"{path}:{number}: not a POPE question ({err})") from err
            label = question.label.strip().lower()
            if label not in ("yes", "no"):
                raise PopeFormatError(f"{path}:{number}: label {question.label!r} is neither 'yes' nor 'no'")
            if question.question_id in seen:
                raise PopeFormatError(f"{path}:{number}: question_id {question.question_id} appears twice")
            seen.add(question.question_id)
            questions.append(PopeQuestion(question.question_id, question.image, question.text, label))
    if not questions:
        raise PopeFormatError(f"{path}: no questions")
    return tuple(questions)


def write_pope_file(questions: Iterable[PopeQuestion], path: str | Path) -> Path:
    """Write questions in POPE's one-object-per-line format (same key order as the official files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for question in questions:
            handle.write(json.dumps(asdict(question)) + "\n")
    return path


def split_name_of(path: str | Path) -> str:
    """The POPE split a file holds ("random", "popular", "adversarial") by its name, else its stem."""
    stem = Path(path).stem
    for name in ("adversarial", "popular", "random"):
        if name in stem:
            return name
    return stem
