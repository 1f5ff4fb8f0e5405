"""Objects an answer names, marked present / hallucinated / unchecked, with CHAIR's synonym table.

Mentions come from `evals.chair.mentions` (the original CHAIR rules the metric scores with), so the page
flags exactly what the CHAIR metric would count. Ground truth is the image's annotated COCO
categories (CHAIR's `--ground-truth instances` rule); uploads have none, so nothing is flagged.
"""

from __future__ import annotations

import re
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

from evals.chair.mentions import find_mentions

PRESENT, HALLUCINATED, UNCHECKED = "present", "hallucinated", "unchecked"
_COLOUR = {PRESENT: "green", HALLUCINATED: "red", UNCHECKED: "blue"}


@dataclass(frozen=True)
class MarkedObject:
    text: str  # as written in the answer
    category: str  # the COCO category it names
    status: str  # PRESENT, HALLUCINATED or UNCHECKED
    start: int  # character span in the answer; -1 when the words could not be found again
    end: int


@dataclass(frozen=True)
class SampleImage:
    path: Path
    image_id: int
    objects: frozenset[str]  # annotated categories


def mark_objects(answer: str, ground_truth: Set[str] | None) -> list[MarkedObject]:
    """Every object mention of `answer` in order, checked against `ground_truth` when known."""
    marks, cursor = [], 0
    for mention in find_mentions(answer):
        if ground_truth is None:
            status = UNCHECKED
        else:
            status = PRESENT if mention.category in ground_truth else HALLUCINATED
        words = re.findall(r"[a-z]+", mention.surface.lower())
        pattern = r"[\s\-_/]+".join(map(re.escape, words)) + r"[a-z]*" if words else None
        found = re.compile(pattern, re.IGNORECASE).search(answer, cursor) if pattern else None
        start, end = (found.start(), found.end()) if found else (-1, -1)
        if found:
            cursor = end
        marks.append(MarkedObject(mention.surface, mention.category, status, start, end))
    return marks


def marked_markdown(answer: str, marks: list[MarkedObject]) -> str:
    """The answer as Streamlit markdown, each mention coloured by its status (struck through if hallucinated)."""
    out, cursor = [], 0
    for mark in sorted((m for m in marks if m.start >= 0), key=lambda m: m.start):
        out.append(_escape(answer[cursor : mark.start]))
        word = _escape(answer[mark.start : mark.end])
        if mark.status == HALLUCINATED:
            word = f"~~{word}~~"
        out.append(f":{_COLOUR[mark.status]}-background[{word}]")
        cursor = mark.end
    out.append(_escape(answer[cursor:]))
    return "".join(out)


def _escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>#~:$])", r"\\\1", text)


def sample_images(root: Path, split: str = "test", limit: int = 24) -> list[SampleImage]:
    """The first `limit` images of a COCO-format split under `root` with their annotated categories."""
    from evals.coco import find_split, load_split

    files = find_split(root, split)
    coco = load_split(files)
    return [
        SampleImage(files.image_path(img.file_name), img.image_id, frozenset(coco.objects.get(img.image_id, ())))
        for img in coco.images[:limit]
    ]
