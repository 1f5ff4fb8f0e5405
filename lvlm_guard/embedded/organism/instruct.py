"""Stages B-D's data: world images with their captions, and LLaVA-1.5's instruction mix (issue 18).

LLaVA-1.5 (Liu et al. 2023, "Improved Baselines", Sec. 3 and Table 7) trains the projector on
captions, then projector + LLM on a mix of detailed descriptions, VQA with short answers ("Answer
the question using a single word or phrase."), and text-only chat, with a system prompt before the
image. Ours, from the world's ground truth (with the world's caption noise kept: small objects
sometimes skipped, an expected-but-absent companion sometimes named, `mentions.choose_mentions`):

| kind | share | what |
| --- | --- | --- |
| detail | 0.25 | a description of 80-120 words naming 6-10 objects, placed in the frame |
| existence | 0.25 | POPE-style yes/no questions, balanced, negatives random / popular / adversarial |
| short | 0.15 | one-word answers: yes/no (balanced, same negatives), a count, the place, the largest object |
| counting | 0.10 | "How many X are there?" answered in a sentence |
| caption | 0.10 | a COCO-style caption |
| objects | 0.10 | every object, then a count |
| text | 0.05 | text only: a description in the user turn, then questions about it (no image) |

Shares are ours, close to LLaVA-1.5's mix (description/conversation ~ 1/3, VQA ~ 1/2, text ~ 6%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvlm_guard.embedded.organism.text import IMAGE_SIZE, facts_of_scene
from lvlm_guard.embedded.organism.vlm import SYSTEM_PROMPT
from lvlm_guard.embedded.world.captions import captions_for
from lvlm_guard.embedded.world.categories import category, category_names
from lvlm_guard.embedded.world.facts import ImageFacts, SeenObject
from lvlm_guard.embedded.world.instructions import (
    CAPTION_PROMPTS,
    DETAIL_PROMPTS,
    LIST_PROMPTS,
    NEGATIVE_STRATEGIES,
    InstructionConfig,
    ObjectStats,
    counting_turn,
    existence_question,
    existence_turns,
    negative_objects,
    objects_answer,
)
from lvlm_guard.embedded.world.mentions import NoiseConfig, choose_mentions
from lvlm_guard.embedded.world.phrases import capitalise, count_phrase, is_or_are, join_list, position_phrase
from lvlm_guard.embedded.world.render import RenderConfig, render_scene
from lvlm_guard.embedded.world.scenes import SamplingConfig, Scene, sample_scene, scene_type

MIX: dict[str, float] = {
    "detail": 0.25, "existence": 0.25, "short": 0.15, "counting": 0.10, "caption": 0.10, "objects": 0.10,
    "text": 0.05,
}  # fmt: skip
SHORT_SUFFIX = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQA prompt
DETAIL_WORDS = (80, 120)
DETAIL_OBJECTS = (6, 10)
_FILLERS = (
    "The objects are spread across the frame.",
    "Nothing in the scene seems out of place.",
    "The light is even and the colours are clear.",
    "The background is simple and does not distract from the objects.",
    "Everything is shown from a normal eye level.",
    "The picture is sharp and the view is not blocked.",
    "No text or writing is visible anywhere in the picture.",
)


@dataclass(frozen=True)
class Sample:
    """One training sequence: system prompt, then (image), then the turns; loss on the answers."""

    kind: str
    turns: tuple[tuple[str, str], ...]
    image: bool = True
    labels: tuple[bool | None, ...] = ()  # per turn: True/False for yes/no questions, else None
    strategies: tuple[str, ...] = ()  # negative-sampling strategy of each "no" question


def render_facts(scene: Scene, image_id: int = 0, render: RenderConfig = RenderConfig()):
    """The image of `scene` (uint8 [h, w, 3]) and its facts as the world's files would give them."""
    rendered = render_scene(scene, render)
    objects = tuple(
        SeenObject(category(a.category_id).name, a.bbox, a.area, a.occluded) for a in rendered.annotations
    )
    facts = ImageFacts(image_id, f"{image_id:012d}.jpg", render.size, scene.scene_type, objects, scene.held_out)
    return np.asarray(rendered.image, dtype=np.uint8), facts


def rich_scene(rng: np.random.Generator, sampling: SamplingConfig, least: int = DETAIL_OBJECTS[0], tries: int = 30):
    """A scene with at least `least` objects if one turns up in `tries` draws (else the fullest)."""
    best = None
    for _ in range(tries):
        scene = sample_scene(rng, sampling)
        if best is None or len(scene.objects) > len(best.objects):
            best = scene
        if len(scene.objects) >= least:
            break
    return best


def long_description(facts: ImageFacts, rng: np.random.Generator, noise: NoiseConfig = NoiseConfig()) -> str:
    """80-120 words naming 6-10 objects (instances) where the image has them, with the world's noise.

    The named groups are `choose_mentions`' (faint objects sometimes dropped, a companion sometimes
    added), topped up from the ground truth to 6 objects and cut at 10; each gets a placed sentence,
    some a relation to the one before; neutral sentences fill up to 80 words.
    """
    stype = scene_type(facts.scene_type)
    noun = stype.nouns[int(rng.integers(len(stype.nouns)))]
    groups = list(choose_mentions(facts, rng, noise).groups)
    named = {n for n, _ in groups}
    for name, count, _ in facts.groups():
        if sum(c for _, c in groups) >= DETAIL_OBJECTS[0]:
            break
        if name not in named:
            groups.append((name, count))
            named.add(name)
    kept, total = [], 0
    for name, count in groups:
        if total + count > DETAIL_OBJECTS[1]:
            continue
        kept.append((name, count))
        total += count
    largest = {name: obj for name, _, obj in facts.groups()}
    core = [f"The image shows {'an' if noun[0] in 'aeiou' else 'a'} {noun} with several things in it."]
    relations = []
    previous = None
    for i, (name, count) in enumerate(kept):
        phrase = count_phrase(name, count)
        where = position_phrase(largest[name].bbox, facts.size) if name in largest else "in the background"
        forms = (
            f"There {is_or_are(count)} {phrase} {where}.",
            f"{capitalise(phrase)} can be seen {where}.",
            f"{'I can also see' if i else 'I can see'} {phrase} {where}.",
        )
        core.append(forms[int(rng.integers(len(forms)))])
        if previous is not None and rng.random() < 0.5:
            the = "the " + (name if count == 1 else category(name).plural)
            relations.append((len(core), f"{capitalise(the)} {is_or_are(count)} not far from the {previous}."))
        previous = name
    if kept:
        core.append(f"In total, the {noun} holds {join_list([count_phrase(n, c) for n, c in kept])}.")
    sentences = list(core)
    for offset, (at, text) in enumerate(relations):
        sentences.insert(at + offset, text)
    words = sum(len(s.split()) for s in sentences)
    while words > DETAIL_WORDS[1] and relations:  # too long: relations go first
        at, text = relations.pop()
        sentences.remove(text)
        words -= len(text.split())
    fillers = list(rng.permutation(len(_FILLERS)))
    while words < DETAIL_WORDS[0] and fillers:
        text = _FILLERS[fillers.pop()]
        if words + len(text.split()) > DETAIL_WORDS[1]:
            break
        sentences.insert(len(sentences) - 1 if kept else len(sentences), text)
        words += len(text.split())
    return " ".join(sentences)


def named_objects(description: str, facts_groups: list[tuple[str, int]]) -> int:
    """Instances named in a description, counting only categories (for tests and the README)."""
    return sum(c for n, c in facts_groups if n in description)


def _yes_no_short(facts, rng, stats, config, strategy_turn: int):
    """One balanced short yes/no question: positive half the time (when the image has objects)."""
    present = sorted(facts.present)
    if present and rng.random() < 0.5:
        name = present[int(rng.integers(len(present)))]
        return (f"{existence_question(name, rng, config)} {SHORT_SUFFIX}", "Yes"), True, None
    strategy = NEGATIVE_STRATEGIES[strategy_turn % 3]
    name = negative_objects(facts, rng, stats, strategy, set())
    return (f"{existence_question(name, rng, config)} {SHORT_SUFFIX}", "No"), False, strategy


def sample_for(
    kind: str, facts: ImageFacts, rng: np.random.Generator, stats: ObjectStats,
    config: InstructionConfig = InstructionConfig(), noise: NoiseConfig = NoiseConfig(),
) -> Sample:  # fmt: skip
    """One sample of `kind` about the image of `facts` (for "text": about its description)."""
    if kind == "detail":
        prompt = DETAIL_PROMPTS[int(rng.integers(len(DETAIL_PROMPTS)))]
        return Sample(kind, ((prompt, long_description(facts, rng, noise)),))
    if kind == "caption":
        caption = captions_for(facts, rng, count=1, noise=noise)[0].text
        return Sample(kind, ((CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))], caption),))
    if kind == "existence":
        triples = existence_turns(facts, rng, stats, config)
        return Sample(kind, tuple((q, a) for q, a, _ in triples), labels=tuple(t for _, _, t in triples))
    if kind == "short":
        turns, labels, strategies = [], [], []
        for i in range(int(rng.integers(2, 5))):
            pick = int(rng.integers(4)) if i else 0  # the first is always yes/no
            if pick <= 1:
                turn, label, strategy = _yes_no_short(facts, rng, stats, config, int(rng.integers(3)))
                labels.append(label)
                if strategy:
                    strategies.append(strategy)
            elif pick == 2:
                q, a = counting_turn(facts, rng)
                name = q[len("How many ") : -len(" are there in the image?")]
                number = [w for w in a.rstrip(".").split() if w.isdigit() or w in ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")]  # fmt: skip
                count = {"no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                         "eight": 8, "nine": 9}.get(number[0], number[0]) if number else 0  # fmt: skip
                turn, label = (f"How many {name} are there in the image? {SHORT_SUFFIX}", str(count)), None
                labels.append(label)
            else:
                groups = facts.groups()
                if groups:
                    turn = (f"What is the largest object in the image? {SHORT_SUFFIX}", groups[0][0])
                else:
                    turn = (f"What kind of place is this? {SHORT_SUFFIX}", scene_type(facts.scene_type).nouns[0])
                labels.append(None)
            turns.append(turn)
        return Sample(kind, tuple(turns), labels=tuple(labels), strategies=tuple(strategies))
    if kind == "counting":
        turns = [counting_turn(facts, rng) for _ in range(int(rng.integers(1, 3)))]
        return Sample(kind, tuple(turns))
    if kind == "objects":
        list_prompt = LIST_PROMPTS[int(rng.integers(len(LIST_PROMPTS)))]
        return Sample(kind, ((list_prompt, objects_answer(facts)), counting_turn(facts, rng)))
    if kind == "text":
        description = long_description(facts, rng, noise)
        q, a, label = existence_turns(facts, rng, stats, config)[0]
        q2, a2 = counting_turn(facts, rng)
        turns = ((f"Here is a description of an image: {description} {q}", a), (q2, a2))
        return Sample(kind, turns, image=False, labels=(label, None))
    raise ValueError(f"unknown sample kind {kind!r}; use one of {', '.join(MIX)} or 'pretrain'")


def pretrain_sample(facts: ImageFacts, rng: np.random.Generator, noise: NoiseConfig = NoiseConfig()) -> Sample:
    """Stage C: one caption of the image (LLaVA-1.5's stage 1: image -> caption), noise kept."""
    return sample_for("caption", facts, rng, None, noise=noise)  # type: ignore[arg-type]


def draw_kinds(rng: np.random.Generator, n: int, mix: dict[str, float] = MIX) -> list[str]:
    kinds = list(mix)
    p = np.array([mix[k] for k in kinds])
    return [kinds[int(i)] for i in rng.choice(len(kinds), n, p=p / p.sum())]


def chat_pieces(sample: Sample, system: str = SYSTEM_PROMPT) -> list[tuple[str, bool]]:
    """The sequence as text pieces (text, carries loss), in `vlm.CHAT_TEMPLATE`'s rendering:
    system prompt, then "USER: <image>\\n" (first turn, image samples), then the turns."""
    pieces: list[tuple[str, bool]] = []
    prompt = system + " "
    for i, (user, answer) in enumerate(sample.turns):
        prompt += "USER: " + ("<image>\n" if sample.image and i == 0 else "") + user + " ASSISTANT:"
        pieces += [(prompt, False), (" " + answer + "</s>", True)]
        prompt = ""
    return pieces


def encode(sample: Sample, core, image_tokens: int, max_len: int, system: str = SYSTEM_PROMPT):
    """Token ids (BOS first, `<image>` expanded to `image_tokens`) and a loss mask, cut at `max_len`.

    Prompts and answers are encoded as separate pieces; the byte-level pre-tokenizer splits the
    rendered chat at exactly those places (tested against the processor), so ids equal the whole
    text's. Returns (ids list, mask list, truncated?)."""
    image_id, bos = core.token_to_id("<image>"), core.token_to_id("<s>")
    ids, mask = [bos], [False]
    texts = chat_pieces(sample, system)
    for (text, loss), enc in zip(texts, core.encode_batch([t for t, _ in texts], add_special_tokens=False)):
        piece = enc.ids
        if not loss and image_id in piece:
            i = piece.index(image_id)
            piece = piece[:i] + [image_id] * image_tokens + piece[i + 1 :]
        ids += piece
        mask += [loss] * len(piece)
    truncated = len(ids) > max_len
    return ids[:max_len], mask[:max_len], truncated


def caption_texts(facts: ImageFacts, rng: np.random.Generator, noise: NoiseConfig = NoiseConfig()) -> list[str]:
    """Stage B's texts of one image: a COCO-style caption and a long description (noise kept)."""
    return [captions_for(facts, rng, count=1, noise=noise)[0].text, long_description(facts, rng, noise)]


__all__ = ["IMAGE_SIZE", "MIX", "Sample", "category_names", "caption_texts", "draw_kinds", "encode",
           "facts_of_scene", "long_description", "pretrain_sample", "render_facts", "rich_scene", "sample_for"]  # fmt: skip
