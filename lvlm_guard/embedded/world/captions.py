"""COCO-style captions: five or more short sentences per image, each naming its salient objects.

Like human COCO captions they vary in wording, use everyday synonyms ("a man", "a sofa"), skip
small things and, at `NoiseConfig.companion_rate`, name an object the scene suggests but the image
lacks (see `mentions`). Each caption records which of its objects are absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvlm_guard.embedded.world.categories import SYNONYMS, with_article
from lvlm_guard.embedded.world.facts import ImageFacts
from lvlm_guard.embedded.world.mentions import NoiseConfig, choose_mentions
from lvlm_guard.embedded.world.phrases import capitalise, count_phrase, is_or_are, join_list
from lvlm_guard.embedded.world.scenes import scene_type

_VERBS = {
    "person": ("standing", "walking"),
    "dog": ("standing", "sitting"),
    "cat": ("sitting", "lying"),
    "car": ("parked", "driving"),
    "bus": ("parked", "driving"),
    "truck": ("parked", "driving"),
    "bicycle": ("parked", "leaning"),
    "bird": ("flying", "perched"),
}


@dataclass(frozen=True)
class Caption:
    text: str
    hallucinated: tuple[str, ...]  # named in the text but not in the image


def caption_noun(name: str, count: int, rng: np.random.Generator) -> str:
    """A count phrase, sometimes with the everyday word instead of the COCO name."""
    if name == "person":
        if count == 1:
            return with_article(("man", "woman", "person")[int(rng.integers(3))])
        return count_phrase(name, count) if rng.random() < 0.6 else "some people"
    synonyms = SYNONYMS.get(name, ())
    if count == 1 and synonyms and rng.random() < 0.3:
        return with_article(synonyms[int(rng.integers(len(synonyms)))])
    return count_phrase(name, count)


def _templates(lead: str, rest: list[str], all_: str, verb: str, place: str, prep: str, plural: bool):
    """Every caption shape that fits these pieces."""
    be = is_or_are(2 if plural else 1)
    shapes = [
        f"{capitalise(with_article(place))} with {all_}.",
        f"{capitalise(all_)} in {with_article(place)}.",
        f"There {be} {all_} {prep} this {place}.",
        f"A view of {with_article(place)} with {all_}.",
        f"A picture of {all_}.",
        f"An image of {with_article(place)} that has {all_}.",
        f"{capitalise(lead)} {verb} {prep} {with_article(place)}.",
    ]
    if rest:
        shapes += [
            f"{capitalise(lead)} next to {join_list(rest)}.",
            f"A close up of {lead} with {join_list(rest)} nearby.",
            f"{capitalise(lead)} {verb} {prep} {with_article(place)} with {join_list(rest)}.",
            f"{capitalise(all_)} {'are' if plural or rest else 'is'} visible in the {place}.",
        ]
    return shapes


def captions_for(
    facts: ImageFacts, rng: np.random.Generator, count: int = 5, noise: NoiseConfig | None = None
) -> list[Caption]:
    """`count` captions of one image, each with its own wording and its own draw of noise."""
    noise = noise or NoiseConfig()
    stype = scene_type(facts.scene_type)
    prep = "on" if stype.name == "street" else "in"
    used: set[str] = set()
    captions = []
    for _ in range(count):
        mentions = choose_mentions(facts, rng, noise, limit=int(rng.integers(1, 4)))
        nouns = [caption_noun(name, n, rng) for name, n in mentions.groups]
        lead_name, lead_count = mentions.groups[0] if mentions.groups else ("", 0)
        if not nouns:  # an image with nothing annotated in it
            nouns, lead_count = [f"an empty {stype.nouns[0]}"], 1
        verbs = _VERBS.get(lead_name, ("sitting",))
        verb = verbs[int(rng.integers(len(verbs)))]
        place = stype.nouns[int(rng.integers(len(stype.nouns)))]
        shapes = _templates(nouns[0], nouns[1:], join_list(nouns), verb, place, prep, lead_count > 1)
        fresh = [s for s in shapes if s not in used] or shapes
        text = fresh[int(rng.integers(len(fresh)))]
        used.add(text)
        captions.append(Caption(text, mentions.hallucinated))
    return captions
