"""Turning a free-form answer to "Is there a X in the image?" into yes / no.

POPE's evaluation (AoiDragon/POPE `evaluate.py`) keeps the text before the first ".", drops commas,
splits on spaces and answers "no" if one of the words is exactly `No`, `no` or `not`; anything else,
the empty string included, is "yes". `parse_yes_no_official` re-implements that rule literally; it
is the default (`answer_rule="official"`), so runs compare with published numbers.

`parse_yes_no` (`answer_rule="ours"`, opt-in) keeps POPE's shape -- first sentence, negation means "no", otherwise
"yes" -- and fixes what the literal rule gets wrong on real model output:

1. A leading "yes"/"no" decides: "Yes, there is a cat, though it is not large." is yes (the literal
   rule says no because of "not").
2. Case and punctuation do not matter: "Not that I can see", "NO!" and "no;" are no.
3. Contractions and other negations count: "There isn't a cat", "I cannot see one", "none",
   "nothing", "nope" are no (the literal rule says yes to "isn't").
4. The first *non-empty* sentence is used, split at ".", "!", "?" or a line break.
5. Empty output stays "yes", as in POPE, so metrics remain comparable; the runner reports how many
   outputs were empty so that a silent model cannot pass unnoticed.

"There is a dog but no cat." is no under both rules: POPE asks about one object per question, and a
negation anywhere in the first sentence is read as the answer.
"""

from __future__ import annotations

import re
from typing import Literal

Answer = Literal["yes", "no"]

_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
NEGATIONS: frozenset[str] = frozenset(
    {"no", "not", "none", "nothing", "nobody", "nowhere", "neither", "nor", "never", "cannot", "nope"}
)


def first_sentence(text: str) -> str:
    """The first non-empty sentence, stripped ("" when there is none)."""
    for part in _SENTENCE_END.split(text):
        if part.strip():
            return part.strip()
    return ""


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _is_negation(word: str) -> bool:
    return word in NEGATIONS or word.endswith("n't")


def parse_yes_no(text: str) -> Answer:
    """Our reading of an answer (see module docstring for each rule and why)."""
    words = _words(first_sentence(text))
    if not words:
        return "yes"
    if words[0] in ("yes", "no"):
        return words[0]  # type: ignore[return-value]
    return "no" if any(_is_negation(word) for word in words) else "yes"


def parse_yes_no_official(text: str) -> Answer:
    """POPE evaluate.py's rule, literally: first '.'-sentence, commas removed, exact words No/no/not."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def is_empty_answer(text: str) -> bool:
    """No words at all in the output (counted as "yes" by POPE's rule)."""
    return not _words(text)


ANSWER_RULES = {"ours": parse_yes_no, "official": parse_yes_no_official}
