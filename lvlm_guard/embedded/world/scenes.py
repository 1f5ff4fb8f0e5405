"""Scene types and the sampler that decides what an image holds and where.

Object hallucination in LVLMs follows co-occurrence: a model that has seen "laptop, mouse, keyboard"
together thousands of times says "keyboard" when it sees a laptop (Li et al., POPE, EMNLP 2023,
Sec. 3; Zhou et al., LURE, ICLR 2024, Sec. 2). The world reproduces that pressure on purpose:

* each scene type draws mostly its typical objects, weighted like COCO's frequent ones, and now and
  then a rare object from elsewhere;
* companion rules (trigger -> companion) put the companion in almost every image that holds the
  trigger, except at `companion_omission_rate`, where it is deliberately held out. Those held-out
  images are where a prior-driven model names an object that is not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lvlm_guard.embedded.world.categories import category
from lvlm_guard.embedded.world.errors import WorldError
from lvlm_guard.embedded.world.looks import look_of


@dataclass(frozen=True)
class CompanionRule:
    """When any trigger is in the scene, the companion usually is too."""

    triggers: tuple[str, ...]
    companion: str


@dataclass(frozen=True)
class SceneType:
    """One kind of place: its typical objects (with weights), its furniture and its companion rules.

    `ground_line` is where the floor, road or desk starts, as a fraction of the image height.
    `supports` are large objects (table, couch) put in first with their probability, so that
    smaller objects can stand on or in front of them.
    """

    name: str
    typical: tuple[tuple[str, float], ...]
    supports: tuple[tuple[str, float], ...]
    rules: tuple[CompanionRule, ...]
    objects: tuple[int, int]  # instances besides supports, inclusive range
    ground_line: float
    nouns: tuple[str, ...]  # what captions call the place


def _rule(companion: str, *triggers: str) -> CompanionRule:
    return CompanionRule(tuple(triggers), companion)


SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType(
        "kitchen",
        typical=(
            ("cup", 3.0),
            ("bowl", 3.0),
            ("fork", 2.5),
            ("knife", 2.0),
            ("spoon", 2.0),
            ("bottle", 2.0),
            ("pizza", 1.5),
            ("cake", 1.2),
            ("wine glass", 1.2),
            ("banana", 1.0),
            ("apple", 1.0),
            ("vase", 0.5),
            ("chair", 0.8),
            ("person", 0.5),
        ),
        supports=(("dining table", 0.75),),
        rules=(
            _rule("fork", "cake", "pizza"),
            _rule("knife", "fork"),
            _rule("spoon", "bowl"),
            _rule("bottle", "wine glass"),
        ),
        objects=(2, 6),
        ground_line=0.55,
        nouns=("kitchen", "kitchen counter", "dining area"),
    ),
    SceneType(
        "office",
        typical=(
            ("laptop", 3.0),
            ("mouse", 2.2),
            ("keyboard", 2.0),
            ("tv", 1.5),
            ("book", 2.0),
            ("cell phone", 1.8),
            ("cup", 1.5),
            ("chair", 1.2),
            ("bottle", 0.8),
            ("potted plant", 0.7),
            ("clock", 0.6),
            ("person", 0.5),
        ),
        supports=(),
        rules=(_rule("mouse", "laptop"), _rule("keyboard", "mouse", "tv")),
        objects=(2, 6),
        ground_line=0.5,
        nouns=("office", "workspace", "work area"),
    ),
    SceneType(
        "street",
        typical=(
            ("car", 3.0),
            ("person", 3.0),
            ("bus", 1.5),
            ("truck", 1.3),
            ("bicycle", 1.5),
            ("traffic light", 1.5),
            ("stop sign", 1.0),
            ("fire hydrant", 0.8),
            ("bench", 0.8),
            ("bird", 0.8),
            ("dog", 0.6),
            ("umbrella", 0.8),
        ),
        supports=(),
        rules=(_rule("person", "bicycle", "umbrella"), _rule("car", "bus", "traffic light")),
        objects=(2, 6),
        ground_line=0.5,
        nouns=("street", "city street", "road"),
    ),
    SceneType(
        "living room",
        typical=(
            ("tv", 2.0),
            ("chair", 2.0),
            ("cat", 1.8),
            ("dog", 1.8),
            ("clock", 1.5),
            ("book", 2.0),
            ("remote", 1.5),
            ("potted plant", 1.5),
            ("vase", 1.0),
            ("cup", 1.0),
            ("person", 0.8),
            ("laptop", 0.6),
        ),
        supports=(("couch", 0.8),),
        rules=(_rule("tv", "couch"), _rule("remote", "tv")),
        objects=(2, 6),
        ground_line=0.6,
        nouns=("living room", "room", "lounge"),
    ),
)

_SCENES = {s.name: s for s in SCENE_TYPES}


def scene_type(name: str) -> SceneType:
    try:
        return _SCENES[name]
    except KeyError:
        raise WorldError(f"unknown scene type {name!r}; known: {', '.join(_SCENES)}") from None


@dataclass(frozen=True)
class SamplingConfig:
    """How scenes are drawn. Rates are our own choice: frequent enough to matter, rare enough
    that the typical co-occurrence stays the strong prior it is in COCO."""

    companion_omission_rate: float = 0.15  # P(companion held out | trigger present)
    rare_object_rate: float = 0.12  # P(one object from another scene type)
    max_per_category: int = 3
    max_overlap: float = 0.4  # largest share of a smaller box that another box may cover


@dataclass(frozen=True)
class PlacedObject:
    """One object instance: what it is, its box in image fractions, and its own style seed."""

    name: str
    box: tuple[float, float, float, float]  # x, y, w, h as fractions of the image side
    flip: bool
    angle: float  # degrees, counter-clockwise
    style_seed: int


@dataclass(frozen=True)
class Scene:
    """Everything the renderer and the text generators need to know about one image."""

    scene_type: str
    objects: tuple[PlacedObject, ...]  # in drawing order, back to front
    companion_checks: tuple[tuple[str, bool], ...] = field(default=())  # (companion, held out?)
    backdrop_seed: int = 0

    @property
    def held_out(self) -> tuple[str, ...]:
        """Companions whose trigger is in the image but that were deliberately left out."""
        return tuple(c for c, omitted in self.companion_checks if omitted)


def sample_scene(rng: np.random.Generator, config: SamplingConfig = SamplingConfig(), kind: str | None = None) -> Scene:
    """Draw one scene: its type, its objects (after the companion rules) and their layout."""
    stype = scene_type(kind) if kind is not None else SCENE_TYPES[int(rng.integers(len(SCENE_TYPES)))]
    supports = [name for name, p in stype.supports if rng.random() < p]
    names = _typical_objects(rng, stype, config)
    checks = []
    for rule in stype.rules:
        if not any(t in names or t in supports for t in rule.triggers):
            continue
        omitted = bool(rng.random() < config.companion_omission_rate)
        checks.append((rule.companion, omitted))
        if omitted:
            names = [n for n in names if n != rule.companion]
        elif rule.companion not in names:
            names.append(rule.companion)
    objects = _layout(rng, stype, supports, names, config)
    return Scene(stype.name, objects, tuple(checks), int(rng.integers(2**31)))


def _typical_objects(rng: np.random.Generator, stype: SceneType, config: SamplingConfig) -> list[str]:
    names_w = [n for n, _ in stype.typical]
    weights = np.array([w for _, w in stype.typical])
    count = int(rng.integers(stype.objects[0], stype.objects[1] + 1))
    names: list[str] = []
    while len(names) < count:
        name = names_w[int(rng.choice(len(names_w), p=weights / weights.sum()))]
        if names.count(name) < config.max_per_category:
            names.append(name)
    if rng.random() < config.rare_object_rate:
        typical = {n for n, _ in stype.typical} | {n for n, _ in stype.supports}
        others = sorted({n for s in SCENE_TYPES for n, _ in s.typical} - typical)
        names.append(others[int(rng.integers(len(others)))])
    return names


def _layout(
    rng: np.random.Generator, stype: SceneType, supports: list[str], names: list[str], config: SamplingConfig
) -> tuple[PlacedObject, ...]:
    """Boxes for every object, supports first; the rest drawn back to front by where they stand."""
    placed_supports = [_place_support(rng, name, stype) for name in supports]
    surface = placed_supports[0].box if placed_supports else None
    boxes: list[tuple[str, tuple[float, float, float, float]]] = []
    for name in names:
        best, best_overlap = None, 2.0
        for attempt in range(12):
            shrink = 1.0 - 0.04 * attempt
            box = _propose_box(rng, name, stype, surface, shrink)
            overlap = max((_overlap(box, other) for _, other in boxes), default=0.0)
            if overlap < best_overlap:
                best, best_overlap = box, overlap
            if overlap <= config.max_overlap:
                break
        boxes.append((name, best))
    boxes.sort(key=lambda item: (_depth_rank(item[0]), item[1][1] + item[1][3]))  # walls, then far to near
    placed = list(placed_supports)
    for name, box in boxes:
        limit = look_of(name).max_rotation
        angle = float(rng.uniform(-limit, limit))
        placed.append(PlacedObject(name, box, bool(rng.random() < 0.5), angle, int(rng.integers(2**31))))
    return tuple(placed)


def _depth_rank(name: str) -> int:
    return {"wall": 0, "air": 1}.get(category(name).layer, 2)


def _size(rng: np.random.Generator, name: str, scale: float) -> tuple[float, float]:
    cat = category(name)
    lo, hi = cat.size
    longer = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * scale
    aspect = cat.aspect * float(rng.uniform(0.88, 1.12))
    return (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)


def _place_support(rng: np.random.Generator, name: str, stype: SceneType) -> PlacedObject:
    w, h = _size(rng, name, 1.0)
    x = float(rng.uniform(0.5 - w / 2 - 0.12, 0.5 - w / 2 + 0.12))
    bottom = float(rng.uniform(0.9, 1.04))
    return PlacedObject(name, (x, bottom - h, w, h), False, 0.0, int(rng.integers(2**31)))


def _propose_box(
    rng: np.random.Generator,
    name: str,
    stype: SceneType,
    surface: tuple[float, float, float, float] | None,
    shrink: float,
) -> tuple[float, float, float, float]:
    layer = category(name).layer
    ground = stype.ground_line
    if layer == "ground":
        bottom = float(rng.uniform(ground + 0.08, 1.03))
        scale = (0.7 + 0.6 * (bottom - ground) / (1.0 - ground)) * shrink  # nearer is larger
        w, h = _size(rng, name, scale)
    elif layer == "surface" and surface is not None and rng.random() < 0.85:
        sx, sy, sw, sh = surface
        w, h = _size(rng, name, shrink)
        bottom = float(rng.uniform(sy + 0.25 * sh, sy + 0.5 * sh))  # on the table top
        left = sx + 0.05 * sw  # an object wider than the table top sits at its left edge (the draw
        x = float(rng.uniform(left, max(left, sx + 0.95 * sw - w)))  # is kept: other scenes unchanged)
        return (x, bottom - h, w, h)
    elif layer == "surface":
        w, h = _size(rng, name, shrink)
        bottom = float(rng.uniform(ground + 0.1, 0.98))
    elif layer == "wall":
        w, h = _size(rng, name, shrink)
        bottom = float(rng.uniform(min(0.08 + h, ground), ground + 0.05))
    else:  # air
        w, h = _size(rng, name, shrink)
        bottom = float(rng.uniform(0.1 + h, max(0.1 + h, 0.6)))  # a tall flyer: as high as it fits
    x = float(rng.uniform(-0.1 * w, max(-0.1 * w, 1.0 - 0.9 * w)))
    return (x, bottom - h, w, h)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over the smaller box's area."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / max(min(a[2] * a[3], b[2] * b[3]), 1e-9)
