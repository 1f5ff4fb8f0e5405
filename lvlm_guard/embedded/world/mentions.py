"""Which objects a human-like text about an image names, including the mistakes humans make.

Human COCO captions are not exhaustive and not always right: they name the salient objects, skip
small or half-hidden ones, and now and then name an object the scene "should" have (Rohrbach et al.,
CHAIR, EMNLP 2018, Sec. 4, found annotator captions mention absent objects too). Training on such
text is one root of LVLM hallucination, so the world's text keeps both kinds of noise, at rates set
here and recorded per text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvlm_guard.embedded.world.facts import ImageFacts
from lvlm_guard.embedded.world.scenes import scene_type


@dataclass(frozen=True)
class NoiseConfig:
    """Noise rates of generated text (our choice, inside the 10-15% the project asked for)."""

    companion_rate: float = 0.12  # P(a text names one typical companion that is not drawn)
    drop_small_rate: float = 0.3  # P(a small or occluded object goes unmentioned)
    small_area: float = 350.0  # visible pixels under which an object counts as small (224-px image)


@dataclass(frozen=True)
class Mentions:
    """Objects a text names: (name, count) groups in salience order, and the absent ones among them."""

    groups: tuple[tuple[str, int], ...]
    hallucinated: tuple[str, ...]


def absent_companions(facts: ImageFacts) -> list[str]:
    """Objects the scene makes one expect but the image lacks, most expected first.

    Held-out companions come first, then companions of any rule whose trigger is present, then the
    scene type's other typical objects by weight.
    """
    present = facts.present
    if not facts.scene_type:
        return []
    stype = scene_type(facts.scene_type)
    ordered: list[str] = list(facts.held_out)
    for rule in stype.rules:
        if any(t in present for t in rule.triggers):
            ordered.append(rule.companion)
    ordered += [n for n, _ in sorted(stype.typical, key=lambda t: -t[1])]
    return [n for n in dict.fromkeys(ordered) if n not in present]


def choose_mentions(
    facts: ImageFacts, rng: np.random.Generator, noise: NoiseConfig, limit: int | None = None
) -> Mentions:
    """Salient objects (at most `limit` categories), small/occluded ones sometimes dropped, and
    with probability `noise.companion_rate` one expected-but-absent object added."""
    groups = []
    for name, count, largest in facts.groups():
        faint = largest.area < noise.small_area or largest.occluded
        if faint and rng.random() < noise.drop_small_rate:
            continue
        groups.append((name, count))
    if not groups and facts.objects:  # never describe an image as empty when it is not
        name, count, _ = facts.groups()[0]
        groups.append((name, count))
    if limit is not None:
        groups = groups[:limit]
    hallucinated: tuple[str, ...] = ()
    candidates = absent_companions(facts)
    if candidates and rng.random() < noise.companion_rate:
        # the most expected absentee most of the time, another one sometimes
        pick = candidates[0] if rng.random() < 0.7 else candidates[int(rng.integers(len(candidates)))]
        position = int(rng.integers(1, len(groups) + 1)) if groups else 0
        groups.insert(position, (pick, 1))
        hallucinated = (pick,)
    return Mentions(tuple(groups), hallucinated)
