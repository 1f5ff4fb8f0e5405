"""Finding the COCO objects a caption mentions (CHAIR, Rohrbach et al., EMNLP 2018, Sec. 3).

Steps, each a small rule:
1. Lower-case; hyphens become spaces ("hot-dog"); punctuation and digits are boundaries that no
   phrase and no modifier rule reaches across ("a man, dog and cat" has no "man dog").
2. Every word is singularised (`evals.chair.lemma`).
3. Left to right, the longest phrase of the vocabulary that starts at a word wins, so "hot dog" is
   a hot dog and not a dog, "teddy bear" not a bear, "dining table" one table.
4. A singular modifier word is skipped when it only describes the next word ("glass door",
   "orange shirt", "ski slope", "baby elephant"); see `MODIFIER_USES`. A plural ("oranges and
   apples") is always a noun.
5. Phrases that name no object ("flower bed") consume their words and yield nothing.

CHAIR counts each object once per caption (`mentioned_objects`), however often or under however
many names it is mentioned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from evals.chair.lemma import singularize
from evals.chair.vocabulary import MODIFIER_USES, MODIFIES_OBJECTS, PHRASE_TABLE

_TOKEN = re.compile(r"[a-z]+|[^a-z\s]")
_BOUNDARY = None  # placeholder token for punctuation and digits


@dataclass(frozen=True)
class Mention:
    """One object mention: the words as written and the COCO category they name."""

    text: str
    category: str
    position: int  # index of the first word among the caption's tokens


def _tokens(text: str) -> list[tuple[str, str] | None]:
    """(surface, singular) per word, None per punctuation mark or digit."""
    cleaned = re.sub(r"[-_/]", " ", text.lower().replace("\u2019", "'"))
    return [(tok, singularize(tok)) if tok.isalpha() else _BOUNDARY for tok in _TOKEN.findall(cleaned)]


def _match(
    tokens: list, start: int, table: Mapping[tuple[str, ...], str | None], longest: int
) -> tuple[int, str | None]:
    """Length and category of the longest phrase at `start` (0 when none)."""
    for length in range(min(longest, len(tokens) - start), 0, -1):
        window = tokens[start : start + length]
        if any(tok is _BOUNDARY for tok in window):
            continue
        key = tuple(singular for _, singular in window)
        if key in table:
            return length, table[key]
    return 0, None


def _only_modifies(tokens: list, start: int, table: Mapping[tuple[str, ...], str | None], longest: int) -> bool:
    surface, singular = tokens[start]
    if singular not in MODIFIER_USES or surface != singular:  # plurals are nouns
        return False
    following = tokens[start + 1] if start + 1 < len(tokens) else _BOUNDARY
    if following is _BOUNDARY:
        return False
    if following[1] in MODIFIER_USES[singular]:
        return True
    if singular in MODIFIES_OBJECTS:
        length, category = _match(tokens, start + 1, table, longest)
        return length > 0 and category is not None
    return False


def find_mentions(text: str, table: Mapping[tuple[str, ...], str | None] = PHRASE_TABLE) -> tuple[Mention, ...]:
    """Every object mention in reading order (an object may appear several times)."""
    tokens = _tokens(text)
    longest = max(len(key) for key in table)
    mentions: list[Mention] = []
    i = 0
    while i < len(tokens):
        if tokens[i] is _BOUNDARY:
            i += 1
            continue
        length, category = _match(tokens, i, table, longest)
        if length == 0:
            i += 1
            continue
        if length == 1 and _only_modifies(tokens, i, table, longest):
            i += 1
            continue
        if category is not None:
            words = " ".join(surface for surface, _ in tokens[i : i + length])
            mentions.append(Mention(words, category, i))
        i += length
    return tuple(mentions)


def mentioned_objects(text: str, table: Mapping[tuple[str, ...], str | None] = PHRASE_TABLE) -> frozenset[str]:
    """The COCO categories a caption mentions, each once."""
    return frozenset(m.category for m in find_mentions(text, table))
