"""The tokenizer of the stage-A language model (and of the LLaVA built on it later).

v1's byte-level BPE (`lvlm_guard.embedded.tiny_model.train_tokenizer`: GPT-2's byte-level pre-tokenizer,
v1's special-token ids `<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3, `<image>` 4, BOS prepended, v1's
chat template) trained on world text and Debian English together. A word-level vocabulary of 4096
left 19% of the English as `<unk>` (measured on the cleaned Debian text); byte-level BPE has no
`<unk>` and, with the world's text in the training mix, keeps the world's words whole
(`world_coverage` measures it; the build fails if a category name is split).
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

from lvlm_guard.embedded.tiny_model import train_tokenizer
from lvlm_guard.embedded.world.categories import category, category_names

VOCAB_SIZE = 4096  # our choice: world words + frequent English, small enough for an 18 MB int8 model


def world_coverage(tokenizer: PreTrainedTokenizerFast) -> float:
    """Share of the category names and plurals (after a space, as in running text) that are one
    token per word."""
    words = [w for n in category_names() for form in (n, category(n).plural) for w in form.split()]
    whole = [len(tokenizer.backend_tokenizer.encode(" " + w, add_special_tokens=False).ids) == 1 for w in words]
    return sum(whole) / len(whole)


def build_tokenizer(
    world_texts: Iterable[str], english_texts: Iterable[str], vocab_size: int = VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Byte-level BPE over world text then English; deterministic for the same texts."""
    tokenizer = train_tokenizer([*world_texts, *english_texts], vocab_size=vocab_size)
    coverage = world_coverage(tokenizer)
    if coverage < 1.0:
        raise ValueError(f"only {coverage:.0%} of the world's object words are single tokens; add world text")
    return tokenizer
