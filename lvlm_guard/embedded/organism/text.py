"""Procedural text of the synthetic world for stage A (text-only language model), drawn fresh per call.

Issue 18, stage A: the language model must learn the world's language *and* its co-occurrence prior
before it ever sees an image (LLaVA's hallucinations come from the text-pretrained LLM: PAI's "text
inertia", LURE Sec. 2), and it must see enough token-dependent structure for attention sinks to form
(Gu et al., ICLR 2025, Sec. 5: heads that are useful only on some tokens park the rest on BOS). So a
document is one of:

* `scene`: a scene drawn by the world's sampler (its companion rules are the prior) told as prose:
  the detailed description and several COCO-style captions of that scene, with their noise;
* `inventory`: several numbered rooms listed, prose in between, then questions that refer back to
  one room by number ("How many cups were in room 3?"): long-range back-references;
* `count`: a list of object words, then counting and membership questions over that list;
* `chat`: a text-only chat in the model's template (v1's "USER: ... ASSISTANT: ...</s>"), the scene
  given as a description in the user turn, then existence, counting and listing questions about it;
* `distractor`: number lists, copied sequences and shuffled word lists, text that carries no prior.

Every generator takes a `numpy.random.Generator`; the same seed gives the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvlm_guard.embedded.world.captions import captions_for
from lvlm_guard.embedded.world.categories import category, category_names, with_article
from lvlm_guard.embedded.world.facts import ImageFacts, SeenObject
from lvlm_guard.embedded.world.instructions import (
    CAPTION_PROMPTS,
    DETAIL_PROMPTS,
    LIST_PROMPTS,
    InstructionConfig,
    ObjectStats,
    counting_turn,
    detailed_description,
    existence_turns,
    objects_answer,
)
from lvlm_guard.embedded.world.mentions import NoiseConfig
from lvlm_guard.embedded.world.phrases import NUMBER_WORDS, capitalise, count_phrase, join_list
from lvlm_guard.embedded.world.scenes import SCENE_TYPES, sample_scene

IMAGE_SIZE = 224  # the world's image side in pixels (RenderConfig's default)
EOS = "</s>"
DOC_KINDS = ("scene", "inventory", "count", "chat", "distractor")
#: share of each kind among world documents (our choice: prose and chat carry the prior, the rest
#: the token-dependent structure)
DOC_WEIGHTS = (0.30, 0.20, 0.15, 0.25, 0.10)

SYSTEM_PROMPTS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "You are a helpful assistant.",
    "",
)


def facts_of_scene(scene, image_id: int = 0, size: int = IMAGE_SIZE) -> ImageFacts:
    """The facts a text about `scene` needs, without rendering: boxes in pixels, area = box area.

    Rendering would measure visible pixels (occlusion); text generation only needs salience order
    and positions, which the boxes give.
    """
    objects = []
    for obj in scene.objects:
        x, y, w, h = obj.box
        bbox = (x * size, y * size, w * size, h * size)
        objects.append(SeenObject(obj.name, bbox, float(bbox[2] * bbox[3]), False))
    return ImageFacts(image_id, f"{image_id:012d}.png", size, scene.scene_type, tuple(objects), scene.held_out)


def world_stats(seed: int = 12345, scenes: int = 2000) -> ObjectStats:
    """Category frequency and co-occurrence over sampled scenes (POPE's popular/adversarial picks)."""
    rng = np.random.default_rng(seed)
    return ObjectStats.from_facts(facts_of_scene(sample_scene(rng)) for _ in range(scenes))


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 < n < len(NUMBER_WORDS) else str(n)


@dataclass
class WorldText:
    """A stream of world documents; `document()` returns one, `documents(n)` several."""

    rng: np.random.Generator
    stats: ObjectStats | None = None
    noise: NoiseConfig = NoiseConfig()
    instructions: InstructionConfig = InstructionConfig()
    scene_reuse: float = 0.0  # P(a document's scene comes from the pool of recent scenes)
    pool_size: int = 4096

    def __post_init__(self) -> None:
        if self.stats is None:
            self.stats = world_stats()
        self._names = category_names()
        self._weights = np.array(DOC_WEIGHTS) / sum(DOC_WEIGHTS)
        self._pool: list[ImageFacts] = []

    # -- one scene ---------------------------------------------------------------------------
    def _facts(self) -> ImageFacts:
        """A fresh scene, or at `scene_reuse` one of the pool's (the text about it is drawn fresh
        either way). Sampling a scene's layout is half the generator's time; the pool lets the
        trainer's workers keep up with the GPU (measured: README of stage A)."""
        rng = self.rng
        if self.scene_reuse and len(self._pool) >= self.pool_size and rng.random() < self.scene_reuse:
            return self._pool[int(rng.integers(len(self._pool)))]
        facts = facts_of_scene(sample_scene(rng), int(rng.integers(1, 100000)))
        if self.scene_reuse:
            if len(self._pool) < self.pool_size:
                self._pool.append(facts)
            else:
                self._pool[int(rng.integers(self.pool_size))] = facts
        return facts

    def scene_doc(self) -> str:
        rng = self.rng
        facts = self._facts()
        parts = [detailed_description(facts, rng, self.noise)]
        caps = [c.text for c in captions_for(facts, rng, count=int(rng.integers(2, 6)), noise=self.noise)]
        style = int(rng.integers(3))
        if style == 0:
            parts.append("Captions:\n" + "\n".join(f"{i + 1}. {c}" for i, c in enumerate(caps)))
        elif style == 1:
            parts.append(" ".join(caps))
        else:
            parts = [caps[0]] + parts + caps[1:]
        if rng.random() < 0.5:  # a second scene of the same type: the prior, said twice
            other = facts_of_scene(sample_scene(rng, kind=facts.scene_type))
            parts.append(detailed_description(other, rng, self.noise))
        return "\n".join(parts)

    # -- inventories with back-references ------------------------------------------------------
    def inventory_doc(self) -> str:
        rng = self.rng
        rooms = int(rng.integers(2, 6))
        ids = rng.choice(np.arange(1, 100), rooms, replace=False)
        inventories = []
        lines = []
        for rid in ids:
            facts = self._facts()
            groups = [(n, c) for n, c, _ in facts.groups()]
            inventories.append((int(rid), facts, groups))
            phrases = join_list([count_phrase(n, c) for n, c in groups]) or "nothing"
            lines.append(f"Room {rid} is {with_article(facts.scene_type)}. It holds {phrases}.")
            if rng.random() < 0.5:
                lines.append(detailed_description(facts, rng, self.noise))
        for _ in range(int(rng.integers(2, 6))):
            rid, facts, groups = inventories[int(rng.integers(len(inventories)))]
            kind = int(rng.integers(3))
            if kind == 0 and groups:
                name, count = _pick(rng, groups)
                lines.append(f"Question: How many {category(name).plural} are in room {rid}? Answer: {_number(count)}.")
            elif kind == 1:
                name = _pick(rng, self._names)
                present = name in facts.present
                answer = "yes" if present else "no"
                lines.append(f"Question: Is there {with_article(name)} in room {rid}? Answer: {answer}.")
            else:
                listing = join_list([count_phrase(n, c) for n, c in groups]) or "nothing"
                lines.append(f"Question: What is in room {rid}? Answer: {listing}.")
        return "\n".join(lines)

    # -- counting and lists over the context ---------------------------------------------------
    def count_doc(self) -> str:
        rng = self.rng
        pool = list(rng.choice(len(self._names), int(rng.integers(2, 6)), replace=False))
        items = [self._names[int(pool[int(rng.integers(len(pool)))])] for _ in range(int(rng.integers(4, 16)))]
        lines = [f"List: {', '.join(items)}."]
        for _ in range(int(rng.integers(2, 5))):
            kind = int(rng.integers(4))
            if kind == 0:
                name = _pick(rng, items)
                n = items.count(name)
                noun = name if n == 1 else category(name).plural
                lines.append(f"How many times does {name} appear in the list? {capitalise(_number(n))} {noun}.")
            elif kind == 1:
                name = _pick(rng, self._names)
                lines.append(f"Is {name} in the list? {'Yes' if name in items else 'No'}.")
            elif kind == 2:
                lines.append(
                    f"What is the first item? {capitalise(items[0])}. What is the last item? {capitalise(items[-1])}."
                )
            else:
                distinct = list(dict.fromkeys(items))
                lines.append(f"Which different items are in the list? {capitalise(join_list(distinct))}.")
        return "\n".join(lines)

    # -- text-only chat in the template ----------------------------------------------------------
    def chat_doc(self) -> str:
        rng = self.rng
        facts = self._facts()
        system = _pick(rng, SYSTEM_PROMPTS)
        description = detailed_description(facts, rng, self.noise)
        turns: list[tuple[str, str]] = []
        kind = int(rng.integers(4))
        lead = f"Here is a description of an image: {description}"
        if kind == 0:
            turns = [(q, a) for q, a, _ in existence_turns(facts, rng, self.stats, self.instructions)][:3]
            turns[0] = (f"{lead} {turns[0][0]}", turns[0][1])
        elif kind == 1:
            turns = [(f"{lead} {_pick(rng, LIST_PROMPTS)}", objects_answer(facts)), counting_turn(facts, rng)]
        elif kind == 2:  # the assistant describes: the prior in the assistant's voice
            turns = [(_pick(rng, DETAIL_PROMPTS), description)]
            caps = captions_for(facts, rng, count=1, noise=self.noise)
            turns.append((_pick(rng, CAPTION_PROMPTS), caps[0].text))
        else:
            q, a = counting_turn(facts, rng)
            turns = [(f"{lead} {q}", a)]
            turns += [(q2, a2) for q2, a2, _ in existence_turns(facts, rng, self.stats, self.instructions)][:2]
        text = f"{system} " if system else ""
        for user, assistant in turns:
            text += f"USER: {user} ASSISTANT: {assistant}{EOS}"
        return text

    # -- distractors -------------------------------------------------------------------------
    def distractor_doc(self) -> str:
        rng = self.rng
        kind = int(rng.integers(3))
        if kind == 0:
            numbers = [str(int(n)) for n in rng.integers(0, 100, int(rng.integers(8, 40)))]
            return "Numbers: " + " ".join(numbers) + "."
        if kind == 1:
            words = [self._names[int(i)] for i in rng.integers(0, len(self._names), int(rng.integers(3, 10)))]
            seq = " ".join(words)
            return f"Repeat after me: {seq}. {capitalise(seq)}."
        words = [str(_pick(rng, ("the", "a", "of", "and", "in", "with", "to", "on"))) for _ in range(5)]
        words += [self._names[int(i)] for i in rng.integers(0, len(self._names), 10)]
        return " ".join(words[int(i)] for i in rng.permutation(len(words))) + "."

    # -- the stream -----------------------------------------------------------------------------
    def document(self) -> str:
        kind = DOC_KINDS[int(self.rng.choice(len(DOC_KINDS), p=self._weights))]
        try:
            return getattr(self, f"{kind}_doc")()
        except ValueError:  # the world's layout sampler can draw an empty range (rare); draw again
            return self.document()

    def documents(self, n: int) -> list[str]:
        return [self.document() for _ in range(n)]


def vocabulary_text() -> str:
    """Every world word in every form the generators use (names, plurals, capitalised, numbers), so
    a word-level tokenizer built on generated text cannot miss a rare one."""
    words = []
    for name in category_names():
        for form in (name, category(name).plural, with_article(name)):
            words += [form, capitalise(form)]
    for stype in SCENE_TYPES:
        for noun in stype.nouns:
            words += [noun, capitalise(noun), with_article(noun), capitalise(with_article(noun))]
    words += [str(i) for i in range(100)] + list(NUMBER_WORDS) + [capitalise(w) for w in NUMBER_WORDS]
    return " ".join(words) + ". " + ", ".join(words) + "\n"
