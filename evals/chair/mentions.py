"""The COCO objects a caption mentions, found as the original CHAIR script finds them.

`utils/chair.py` `CHAIR.caption_to_words` (LisaAnne/Hallucination; the nltk port in shikiw/OPERA
`chair.py` is the one followed here, see `evals.chair.nlp`), step by step:

1. Lower-case, `word_tokenize`, `pos_tag`, WordNet-lemmatize each token at its tag's part of speech.
2. Left to right, two adjacent lemmas that form a double word ("hot dog", "baby bird", "toilet
   seat") become the one word the table gives, and the scan moves past both.
3. If the caption has both "toilet" and "seat", every "seat" is dropped ("the seat of the toilet"
   is not a chair).
4. Every remaining word that is in the synonym list is a mention of its category, in order; a
   category named three times is three mentions (CHAIR_I counts each).

"orange" (the colour), "glass" and the like count whenever the list has them: the original has no
rule for words that only describe the next noun, and neither do we.
"""

from __future__ import annotations

from dataclasses import dataclass

from evals.chair.nlp import caption_tokens
from evals.chair.vocabulary import Vocabulary, original_vocabulary


@dataclass(frozen=True)
class Mention:
    """One object mention: the word as the original sees it (a lemma or a double word), the COCO
    category it names, its index among the caption's words after double words are joined, and the
    lower-cased token(s) as written (for highlighting)."""

    text: str
    category: str
    position: int
    surface: str = ""


def _joined(caption: str, vocabulary: Vocabulary | None) -> list[tuple[str, str]]:
    """(word, surface) per word: the caption's lemmas with double words joined, left to right."""
    table = (vocabulary or original_vocabulary()).double_words
    tokens = caption_tokens(caption)
    words, i = [], 0
    while i < len(tokens):
        pair = " ".join(lemma for _, lemma in tokens[i : i + 2])
        if pair in table:
            words.append((table[pair], " ".join(token for token, _ in tokens[i : i + 2])))
            i += 2
        else:
            words.append((tokens[i][1], tokens[i][0]))
            i += 1
    return words


def caption_words(caption: str, vocabulary: Vocabulary | None = None) -> list[str]:
    """The caption's lemmas with double words joined (the original's `double_words` list)."""
    return [word for word, _ in _joined(caption, vocabulary)]


def mentions_in_words(
    words: list[str], vocabulary: Vocabulary | None = None, surfaces: list[str] | None = None
) -> tuple[Mention, ...]:
    """The mentions among `caption_words`' output (steps 3-4 of the module docstring)."""
    vocabulary = vocabulary or original_vocabulary()
    drop_seat = "toilet" in words and "seat" in words
    return tuple(
        Mention(word, vocabulary.synonyms[word], position, surfaces[position] if surfaces else word)
        for position, word in enumerate(words)
        if word in vocabulary.synonyms and not (drop_seat and word == "seat")
    )


def find_mentions(caption: str, vocabulary: Vocabulary | None = None) -> tuple[Mention, ...]:
    """Every object mention of `caption`, in reading order (steps 1-4 of the module docstring)."""
    joined = _joined(caption, vocabulary)
    return mentions_in_words([w for w, _ in joined], vocabulary, [s for _, s in joined])


def caption_objects(caption: str, vocabulary: Vocabulary | None = None) -> list[str]:
    """The COCO category of every mention in `caption`, in order, as the original CHAIR finds them."""
    return [mention.category for mention in find_mentions(caption, vocabulary)]
