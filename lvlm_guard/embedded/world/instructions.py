"""LLaVA-style instruction data made from the world's annotations.

Four kinds of conversation per image, mirroring what LLaVA-1.5's training mix asks of a model
(Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023, Sec. 3 and Table 7):

* `detail`: "Please describe this image in detail." answered by a few sentences that place every
  object, with the same human-like noise as the captions (small/occluded objects sometimes skipped,
  sometimes one expected-but-absent companion named);
* `caption`: a short-caption request answered by one of the image's COCO captions;
* `existence`: balanced yes/no questions in POPE's form (Li et al., EMNLP 2023), negatives drawn
  from random, popular and co-occurring absent categories, never from the ground truth;
* `objects`: "What objects are in this image?" and counting, answered from the full ground truth.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from lvlm_guard.embedded.world.categories import category, category_names, with_article
from lvlm_guard.embedded.world.errors import WorldFormatError
from lvlm_guard.embedded.world.facts import ImageFacts, facts_from_files
from lvlm_guard.embedded.world.mentions import NoiseConfig, choose_mentions
from lvlm_guard.embedded.world.phrases import capitalise, count_phrase, is_or_are, join_list, position_phrase
from lvlm_guard.embedded.world.scenes import scene_type

KINDS = ("detail", "caption", "existence", "objects")

DETAIL_PROMPTS = (
    "Please describe this image in detail.",
    "Describe this image in detail.",
    "Can you describe the image in detail?",
    "Give a detailed description of the image.",
    "What do you see in this picture? Describe it in detail.",
    "Describe everything you can see in this image.",
)
CAPTION_PROMPTS = (
    "Write a short caption for this image.",
    "Describe the image briefly.",
    "Give a one-sentence description of the image.",
    "What does this image show? Answer in one sentence.",
)
LIST_PROMPTS = (
    "What objects are in this image?",
    "List the objects you can see in the image.",
    "Which objects appear in this picture?",
)
NEGATIVE_STRATEGIES = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class Conversation:
    """One training conversation about one image; the image goes with the first user turn."""

    image_file: str  # relative to the world root: "<split>/<file_name>"
    turns: tuple[tuple[str, str], ...]  # (user, assistant) pairs
    kind: str = ""


@dataclass(frozen=True)
class InstructionConfig:
    noise: NoiseConfig = NoiseConfig()
    existence_questions: int = 6  # per image, half of them negatives
    held_out_negative_rate: float = 0.5  # P(a held-out companion is one of the negatives)
    pope_wording_rate: float = 0.7  # P(exactly POPE's "Is there a {object} in the image?")


@dataclass(frozen=True)
class ObjectStats:
    """Image frequency of every category and pairwise co-occurrence, as POPE's sampling uses."""

    frequency: dict[str, int]
    cooccurrence: dict[tuple[str, str], int]

    @classmethod
    def from_facts(cls, facts: Iterable[ImageFacts]) -> ObjectStats:
        frequency: Counter[str] = Counter()
        pairs: Counter[tuple[str, str]] = Counter()
        for f in facts:
            present = sorted(f.present)
            frequency.update(present)
            pairs.update((a, b) for a in present for b in present if a != b)
        return cls(dict(frequency), dict(pairs))

    @cached_property
    def popular(self) -> tuple[str, ...]:
        """Categories by image frequency, most frequent first."""
        return tuple(sorted(category_names(), key=lambda n: (-self.frequency.get(n, 0), n)))

    def cooccurring(self, present: Iterable[str]) -> list[str]:
        """Categories by how often they appear with the present ones, most often first."""
        present = list(present)
        score = {n: sum(self.cooccurrence.get((p, n), 0) for p in present) for n in category_names()}
        return sorted(category_names(), key=lambda n: (-score[n], n))


def negative_objects(
    facts: ImageFacts, rng: np.random.Generator, stats: ObjectStats, strategy: str, exclude: set[str]
) -> str | None:
    """One category absent from the image, chosen the way POPE's `strategy` chooses."""
    present = facts.present
    absent = [n for n in category_names() if n not in present and n not in exclude]
    if not absent:
        return None
    if strategy == "random":
        return absent[int(rng.integers(len(absent)))]
    ranked = stats.popular if strategy == "popular" else stats.cooccurring(present)
    top = [n for n in ranked if n in absent][:5]
    return top[int(rng.integers(len(top)))]


def existence_question(name: str, rng: np.random.Generator, config: InstructionConfig) -> str:
    if rng.random() < config.pope_wording_rate:
        return f"Is there a {name} in the image?"  # POPE's wording, article and all
    forms = (
        f"Is there {with_article(name)} in this picture?",
        f"Does the image contain {with_article(name)}?",
        f"Can you see {with_article(name)} in the image?",
        f"Is there a {name} in the image? Answer yes or no.",
    )
    return forms[int(rng.integers(len(forms)))]


def existence_answer(name: str, present: bool) -> str:
    if present:
        return f"Yes, there is {with_article(name)} in the image."
    return f"No, there is no {name} in the image."


def existence_turns(
    facts: ImageFacts, rng: np.random.Generator, stats: ObjectStats, config: InstructionConfig
) -> list[tuple[str, str, bool]]:
    """Balanced (question, answer, label) triples; negatives never name a ground-truth object."""
    present = sorted(facts.present)
    n_pos = min(config.existence_questions // 2, len(present))
    positives = [present[i] for i in rng.choice(len(present), n_pos, replace=False)] if n_pos else []
    negatives: list[str] = []
    held_out = [h for h in facts.held_out if h not in facts.present]
    if held_out and rng.random() < config.held_out_negative_rate:
        negatives.append(held_out[int(rng.integers(len(held_out)))])
    target = max(n_pos, 1)
    for i in range(3 * target):
        if len(negatives) >= target:
            break
        name = negative_objects(facts, rng, stats, NEGATIVE_STRATEGIES[i % 3], set(negatives))
        if name is not None:
            negatives.append(name)
    triples = [(existence_question(n, rng, config), existence_answer(n, True), True) for n in positives]
    triples += [(existence_question(n, rng, config), existence_answer(n, False), False) for n in negatives]
    order = rng.permutation(len(triples))
    return [triples[i] for i in order]


def detailed_description(facts: ImageFacts, rng: np.random.Generator, noise: NoiseConfig) -> str:
    """A paragraph placing every mentioned object, with human-like omissions and one possible
    expected-but-absent companion (recorded nowhere: the text is what a noisy annotator wrote)."""
    stype = scene_type(facts.scene_type)
    place = with_article(stype.nouns[int(rng.integers(len(stype.nouns)))])
    openings = (
        f"The image shows {place}.",
        f"This is a picture of {place}.",
        f"In this image, we can see {place}.",
        f"The picture was taken in {place}.",
    )
    sentences = [openings[int(rng.integers(len(openings)))]]
    mentions = choose_mentions(facts, rng, noise)
    largest = {name: obj for name, _, obj in facts.groups()}
    previous = None
    for i, (name, count) in enumerate(mentions.groups):
        phrase = count_phrase(name, count)
        if name in largest:
            where = position_phrase(largest[name].bbox, facts.size)
        else:  # the absent companion: placed relative to something real
            where = f"next to the {previous}" if previous else "in the background"
        forms = [
            f"There {is_or_are(count)} {phrase} {where}.",
            f"{capitalise(phrase)} can be seen {where}.",
            f"{capitalise(phrase)} {is_or_are(count)} {where}.",
        ]
        if i > 0:
            forms.append(f"I can also see {phrase} {where}.")
        sentences.append(forms[int(rng.integers(len(forms)))])
        previous = name
    closings = (f"Overall, it looks like a typical {stype.nouns[0]}.", "The scene looks calm and ordinary.", "")
    sentences.append(closings[int(rng.integers(len(closings)))])
    return " ".join(s for s in sentences if s)


def objects_answer(facts: ImageFacts) -> str:
    """Every annotated object, most salient first, without noise."""
    phrases = [count_phrase(name, count) for name, count, _ in facts.groups()]
    if not phrases:
        return "I cannot see any of the usual objects in this image."
    return f"The image contains {join_list(phrases)}."


def counting_turn(facts: ImageFacts, rng: np.random.Generator) -> tuple[str, str]:
    groups = facts.groups()
    if groups and rng.random() < 0.8:
        name, count, _ = groups[int(rng.integers(len(groups)))]
    else:
        absent = [n for n in category_names() if n not in facts.present]
        name, count = absent[int(rng.integers(len(absent)))], 0
    plural = category(name).plural
    question = f"How many {plural} are there in the image?"
    if count == 0:
        return question, f"There are no {plural} in the image."
    if count == 1:
        return question, f"There is one {name} in the image."
    return question, f"There are {count_phrase(name, count)} in the image."


def conversations_for(
    facts: ImageFacts,
    image_file: str,
    rng: np.random.Generator,
    stats: ObjectStats,
    captions: list[str],
    kinds: tuple[str, ...] = KINDS,
    config: InstructionConfig = InstructionConfig(),
) -> list[Conversation]:
    """One conversation of each requested kind for one image."""
    out = []
    for kind in kinds:
        if kind == "detail":
            prompt = DETAIL_PROMPTS[int(rng.integers(len(DETAIL_PROMPTS)))]
            turns = ((prompt, detailed_description(facts, rng, config.noise)),)
        elif kind == "caption":
            if not captions:
                continue
            prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
            turns = ((prompt, captions[int(rng.integers(len(captions)))]),)
        elif kind == "existence":
            turns = tuple((q, a) for q, a, _ in existence_turns(facts, rng, stats, config))
        elif kind == "objects":
            turns = (
                (LIST_PROMPTS[int(rng.integers(len(LIST_PROMPTS)))], objects_answer(facts)),
                counting_turn(facts, rng),
            )
        else:
            raise ValueError(f"unknown conversation kind {kind!r}; use some of {KINDS}")
        out.append(Conversation(image_file, turns, kind))
    return out


def iter_conversations(
    root: str | Path,
    split: str,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    config: InstructionConfig = InstructionConfig(),
) -> Iterator[Conversation]:
    """Conversations for every image of a built split, in image order; same seed, same data.

    Reads only the JSON files (no pycocotools), so it runs on machines without it.
    """
    root = Path(root)
    instances = root / "annotations" / f"instances_{split}.json"
    if not instances.is_file():
        raise WorldFormatError(f"no {instances}; build the split first with lvlm_guard.embedded.world.ensure_world({split!r})")
    facts = facts_from_files(instances, root / "annotations" / f"world_{split}.json")
    captions: dict[int, list[str]] = {}
    captions_path = root / "annotations" / f"captions_{split}.json"
    if captions_path.is_file():
        for ann in json.loads(captions_path.read_text())["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
    stats = ObjectStats.from_facts(facts)
    for f in facts:
        rng = np.random.default_rng([seed, f.image_id])
        yield from conversations_for(
            f, f"{split}/{f.file_name}", rng, stats, captions.get(f.image_id, []), kinds, config
        )
