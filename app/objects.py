"""Objects an answer names, marked present / hallucinated / denied / unchecked, with CHAIR's synonym table.

Mentions come from `evals.chair.mentions` (the original CHAIR rules the metric scores with). Ground
truth is the image's annotated COCO categories (CHAIR's `--ground-truth instances` rule); uploads
have none, so nothing is flagged.

Negation: the original CHAIR script has no negation rule (it counts "there is no bus" as a bus
mention), which is right for its descriptions but wrong for yes/no answers. The page reads a mention
inside a negated clause ("No, there is no bus", "without a dog", "isn't a cat") as the answer
saying the object is absent: correctly denied when the image lacks it, wrongly denied when it shows
it. A clause runs from a negation cue to the end of the sentence or a contrast word ("but",
"however", ...), so "no dogs or cats" denies both and "no dog, but a cat" only the dog; "without"
denies the three words after it ("a man without a hat rides a bicycle" denies only the hat); a bare
"No," answering the question is not a cue.
"""

from __future__ import annotations

import re
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

from evals.chair.mentions import find_mentions

PRESENT, HALLUCINATED, UNCHECKED = "present", "hallucinated", "unchecked"
DENIED_ABSENT, DENIED_PRESENT, DENIED = "correctly denied", "wrongly denied", "denied"
_COLOUR = {PRESENT: "green", HALLUCINATED: "red", UNCHECKED: "blue", DENIED_ABSENT: "green", DENIED_PRESENT: "orange",
           DENIED: "gray"}  # fmt: skip
LEGEND = {
    PRESENT: "named and in the image",
    HALLUCINATED: "named but not in the image (struck through)",
    DENIED_ABSENT: "said to be absent, and it is absent (in italics)",
    DENIED_PRESENT: "said to be absent, but it is in the image",
    UNCHECKED: "no ground truth for this image (an upload)",
    DENIED: "said to be absent; no ground truth to check it against (an upload)",
}

# "No," answering a question is a particle, not a cue: "No, there is a bus" says nothing absent
_NEGATION = re.compile(
    r"\bno\b(?!\s*[,.!?])|\b(?:not|none|never|nothing|nobody|nor|neither|cannot)\b|n't\b", re.IGNORECASE
)
_WITHOUT = re.compile(r"\bwithout((?:\W+\w+){1,3})", re.IGNORECASE)  # scope: its noun phrase (3 words)
_CLAUSE_END = re.compile(r"[.;!?\n]|\b(?:but|however|although|though|whereas|while|yet|except)\b", re.IGNORECASE)


def negated_spans(answer: str) -> list[tuple[int, int]]:
    """Character spans of `answer` under a negation: from each cue to the end of its clause."""
    spans = []
    for cue in _NEGATION.finditer(answer):
        end = _CLAUSE_END.search(answer, cue.end())
        spans.append((cue.start(), end.start() if end else len(answer)))
    spans.extend((cue.start(), cue.end()) for cue in _WITHOUT.finditer(answer))
    return spans


def _status(category: str, ground_truth: Set[str] | None, negated: bool) -> str:
    if negated:
        if ground_truth is None:
            return DENIED
        return DENIED_PRESENT if category in ground_truth else DENIED_ABSENT
    if ground_truth is None:
        return UNCHECKED
    return PRESENT if category in ground_truth else HALLUCINATED


@dataclass(frozen=True)
class MarkedObject:
    text: str  # as written in the answer
    category: str  # the COCO category it names
    status: str  # PRESENT, HALLUCINATED, UNCHECKED or one of the DENIED_* / DENIED
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
    negations = negated_spans(answer)
    for mention in find_mentions(answer):
        words = re.findall(r"[a-z]+", mention.surface.lower())
        pattern = r"[\s\-_/]+".join(map(re.escape, words)) + r"[a-z]*" if words else None
        found = re.compile(pattern, re.IGNORECASE).search(answer, cursor) if pattern else None
        start, end = (found.start(), found.end()) if found else (-1, -1)
        if found:
            cursor = end
        negated = found is not None and any(a <= start < b for a, b in negations)
        marks.append(
            MarkedObject(
                mention.surface, mention.category, _status(mention.category, ground_truth, negated), start, end
            )
        )
    return marks


def marked_markdown(answer: str, marks: list[MarkedObject]) -> str:
    """The answer as Streamlit markdown, each mention coloured by its status (struck through if hallucinated)."""
    out, cursor = [], 0
    for mark in sorted((m for m in marks if m.start >= 0), key=lambda m: m.start):
        out.append(_escape(answer[cursor : mark.start]))
        out.append(styled(_escape(answer[mark.start : mark.end]), mark.status))
        cursor = mark.end
    out.append(_escape(answer[cursor:]))
    return "".join(out)


def styled(word: str, status: str) -> str:
    """`word` (already escaped) in the markdown a mention of `status` gets: its colour, struck through
    when hallucinated, italic when denied."""
    if status == HALLUCINATED:
        word = f"~~{word}~~"
    elif status in (DENIED_ABSENT, DENIED_PRESENT, DENIED):
        word = f"*{word}*"
    return f":{_COLOUR[status]}-background[{word}]"


def legend_markdown(ground_truth_known: bool = True) -> str:
    """One line per mark the answers can show (LEGEND), each drawn as the answers draw it; marks
    that cannot occur (with or without ground truth) are left out."""
    shown = [s for s in LEGEND if (s not in (UNCHECKED, DENIED)) == ground_truth_known]
    return "  \n".join(f"{styled(_escape(s), s)} {_escape(LEGEND[s])}" for s in shown)


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
