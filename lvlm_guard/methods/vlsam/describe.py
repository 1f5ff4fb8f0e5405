"""VL-SAM's object words: the VLM describes the image, the object nouns of its own text are the words.

Paper Sec. 3.1: the VLM answers a question about the image, object words are parsed from the
generated text (the paper parses tags as Tag2Text does), and each object token's attention becomes
a map. Here the parser is a callable `text -> [(word, category, char_start, char_end)]`; the
default, `coco_object_words`, finds COCO objects as the original CHAIR script does
(`evals.chair.find_mentions`: synonyms and double words, e.g. "woman" -> person), which is what the
embedded world's categories need. The mention's position in the *generated tokens* gives the query
rows of the flow (`mention_spans`): the map is read at the tokens the model itself produced.

Sampling: the paper decodes with temperature 0.8, top-p 0.1 (Sec. 4.1); `DescribeConfig` has both,
seeded per call inside `torch.random.fork_rng`, so a call is reproducible and the global RNG is
left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lvlm_guard.errors import InputMismatchError

if TYPE_CHECKING:
    from lvlm_guard.engine.guard import Guard

ObjectWords = Callable[[str], list[tuple[str, str, int, int]]]  # text -> (word, category, start, end)


@dataclass(frozen=True)
class DescribeConfig:
    """max_new_tokens: room for a detailed description (the world's run to ~80 tokens);
    do_sample, temperature, top_p: the paper's decoding (Sec. 4.1: 0.8, 0.1); seed: per call."""

    max_new_tokens: int = 96
    do_sample: bool = True
    temperature: float = 0.8
    top_p: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class ObjectMention:
    """An object word of a generated text: the word as written, the category it names, and the
    [token_start, token_end) of its tokens among the generated tokens."""

    word: str
    category: str
    token_start: int
    token_end: int


@dataclass(frozen=True)
class Description:
    """A generated answer: the question, the generated token ids, their text and its object mentions."""

    question: str
    token_ids: tuple[int, ...]
    text: str
    mentions: tuple[ObjectMention, ...]


def coco_object_words(text: str) -> list[tuple[str, str, int, int]]:
    """COCO object mentions of `text` with their character spans, found as CHAIR finds them.

    `evals.chair.find_mentions` gives each mention's surface form (lower-cased, as written) in
    reading order; each is located in the lower-cased text left to right from the previous one.
    A surface the tokenizer changed beyond finding (rare: quotes) is skipped.
    """
    from evals.chair.mentions import find_mentions

    lowered = text.lower()
    found, cursor = [], 0
    for mention in find_mentions(text):
        at = lowered.find(mention.surface, cursor)
        if at < 0:
            continue
        found.append((text[at : at + len(mention.surface)], mention.category, at, at + len(mention.surface)))
        cursor = at + len(mention.surface)
    return found


def token_char_ends(tokenizer, token_ids: Sequence[int]) -> list[int]:
    """End character of every token in `tokenizer.decode(token_ids)` (decoding prefix by prefix)."""
    ends = [len(tokenizer.decode(list(token_ids[: i + 1]), skip_special_tokens=True)) for i in range(len(token_ids))]
    return [max(ends[: i + 1]) for i in range(len(ends))]  # monotone even where a prefix decodes short


def mention_spans(
    tokenizer, token_ids: Sequence[int], words: ObjectWords = coco_object_words
) -> tuple[str, tuple[ObjectMention, ...]]:
    """(decoded text, mentions with token spans): token k covers characters [end_{k-1}, end_k) of the
    decoded text; a mention's span is every token its characters overlap."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    ends = token_char_ends(tokenizer, token_ids)
    starts = [0, *ends[:-1]]
    mentions = []
    for word, category, c0, c1 in words(text):
        tokens = [k for k, (s, e) in enumerate(zip(starts, ends)) if s < c1 and e > c0]
        if not tokens:
            raise InputMismatchError(f"mention_spans: {word!r} at characters [{c0}, {c1}) has no token in {text!r}")
        mentions.append(ObjectMention(word, category, tokens[0], tokens[-1] + 1))
    return text, tuple(mentions)


def describe(
    guard: Guard,
    image,
    question: str,
    cfg: DescribeConfig = DescribeConfig(),
    words: ObjectWords = coco_object_words,
) -> Description:
    """Generate an answer to `question` about `image` and find its object words (paper Sec. 3.1)."""
    sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        out = guard.generate([image], [question], max_new_tokens=cfg.max_new_tokens, **sampling)
    ids = tuple(out.token_ids[0])
    text, mentions = mention_spans(guard.processor.tokenizer, ids, words)
    return Description(question, ids, text, mentions)
