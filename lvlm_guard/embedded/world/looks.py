"""What each category looks like: a few coloured parts in a unit box, one recipe per category.

A small vision encoder trained from scratch has to tell 37 categories apart at sizes down to one
16-px patch, so every recipe combines a silhouette of its own with a colour scheme and a detail
pattern of its own (wheels, window rows, key grids, tines, pepperoni dots, clock ticks). Colours and
details vary per instance so that no single pixel value gives a category away.

Coordinates are in the object's unit box: x to the right, y down, both in [0, 1]; the renderer maps
the box to pixels, flips and rotates it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lvlm_guard.embedded.world.errors import UnknownCategoryError

Point = tuple[float, float]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Part:
    """One filled polygon, polyline or outline of an object, in unit-box coordinates."""

    points: tuple[Point, ...]
    colour: RGB
    kind: str = "fill"  # "fill" | "line" | "outline"
    width: float = 0.0  # line width, as a fraction of the object's shorter pixel side


@dataclass(frozen=True)
class Look:
    """A category's recipe and how freely an instance may be turned."""

    draw: Callable[[np.random.Generator], list[Part]]
    max_rotation: float  # degrees either way
    flippable: bool


LOOKS: dict[str, Look] = {}


def look(name: str, *, rotate: float = 4.0, flip: bool = True):
    """Register the recipe of category `name`."""

    def register(fn: Callable[[np.random.Generator], list[Part]]):
        LOOKS[name] = Look(fn, rotate, flip)
        return fn

    return register


def look_of(name: str) -> Look:
    try:
        return LOOKS[name]
    except KeyError:
        raise UnknownCategoryError(f"no look is defined for category {name!r}") from None


# --- shapes and colours ------------------------------------------------------------------------


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 18, start: float = 0.0, end: float = 360.0):
    """Points on an ellipse arc, angles in degrees (0 = right, 90 = down)."""
    count = n if end - start >= 360.0 else n + 1  # a full turn must not repeat its first point
    step = (end - start) / n
    return tuple(
        (cx + rx * math.cos(math.radians(start + i * step)), cy + ry * math.sin(math.radians(start + i * step)))
        for i in range(count)
    )


def rect(x0: float, y0: float, x1: float, y1: float):
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def jitter(rng: np.random.Generator, colour: RGB, amount: int = 18) -> RGB:
    """A colour moved by up to `amount` per channel, so instances never share exact pixel values."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)  # type: ignore[return-value]


def pick(rng: np.random.Generator, colours: tuple[RGB, ...], amount: int = 18) -> RGB:
    return jitter(rng, colours[int(rng.integers(len(colours)))], amount)


def fill(points, colour: RGB) -> Part:
    return Part(tuple(points), colour)


def line(points, colour: RGB, width: float) -> Part:
    return Part(tuple(points), colour, "line", width)


def outline(points, colour: RGB, width: float) -> Part:
    return Part(tuple(points), colour, "outline", width)


DARK = ((30, 30, 34), (45, 42, 40), (25, 28, 40))
METAL = ((175, 178, 185), (150, 152, 160), (200, 200, 205))
GLASS = ((150, 200, 230), (120, 170, 210))
WOOD = ((150, 100, 55), (120, 80, 45), (175, 125, 75))
SKIN = ((235, 195, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50))
WHITE = ((240, 240, 235),)
BRIGHT = ((220, 40, 40), (40, 90, 210), (240, 200, 40), (40, 160, 70), (230, 120, 30), (140, 60, 170))


# --- street ------------------------------------------------------------------------------------


@look("person")
def _person(rng):
    shirt, trousers, skin = pick(rng, BRIGHT, 30), pick(rng, DARK + ((60, 70, 120),), 20), pick(rng, SKIN, 10)
    hair = pick(rng, DARK + ((110, 70, 30), (200, 170, 90)), 10)
    return [
        fill(rect(0.27, 0.56, 0.48, 1.0), trousers),
        fill(rect(0.52, 0.56, 0.73, 1.0), trousers),
        fill(((0.22, 0.22), (0.78, 0.22), (0.82, 0.6), (0.18, 0.6)), shirt),
        line(((0.2, 0.25), (0.04, 0.55)), shirt, 0.16),
        line(((0.8, 0.25), (0.96, 0.55)), shirt, 0.16),
        fill(ellipse(0.5, 0.12, 0.22, 0.1), skin),
        fill(ellipse(0.5, 0.07, 0.23, 0.06, start=180, end=360), hair),
    ]


@look("bicycle")
def _bicycle(rng):
    frame, tyre = pick(rng, BRIGHT, 30), pick(rng, DARK, 8)
    back, front = (0.2, 0.68), (0.8, 0.68)
    return [
        outline(ellipse(*back, 0.18, 0.3, 20), tyre, 0.07),
        outline(ellipse(*front, 0.18, 0.3, 20), tyre, 0.07),
        line((back, (0.45, 0.68), (0.36, 0.3), back), frame, 0.07),
        line(((0.45, 0.68), (0.72, 0.3), (0.36, 0.3)), frame, 0.07),
        line(((0.72, 0.3), front), frame, 0.07),
        line(((0.33, 0.22), (0.42, 0.22)), tyre, 0.09),
        line(((0.66, 0.18), (0.78, 0.14)), tyre, 0.08),
    ]


def _wheel(cx: float, cy: float, rx: float, ry: float, rng) -> list[Part]:
    return [
        fill(ellipse(cx, cy, rx, ry, 14), pick(rng, DARK, 6)),
        fill(ellipse(cx, cy, rx * 0.45, ry * 0.45, 10), pick(rng, METAL, 10)),
    ]


@look("car")
def _car(rng):
    body, glass = pick(rng, BRIGHT + ((200, 200, 205), (30, 30, 35)), 25), pick(rng, GLASS, 10)
    parts = [
        fill(((0.02, 0.5), (0.2, 0.42), (0.85, 0.42), (0.99, 0.52), (0.99, 0.82), (0.01, 0.82)), body),
        fill(((0.22, 0.45), (0.33, 0.1), (0.68, 0.1), (0.82, 0.45)), body),
        fill(((0.28, 0.42), (0.36, 0.16), (0.49, 0.16), (0.49, 0.42)), glass),
        fill(((0.53, 0.42), (0.53, 0.16), (0.65, 0.16), (0.76, 0.42)), glass),
        fill(rect(0.9, 0.52, 0.99, 0.6), (250, 240, 170)),
    ]
    return parts + _wheel(0.24, 0.82, 0.1, 0.18, rng) + _wheel(0.77, 0.82, 0.1, 0.18, rng)


@look("bus")
def _bus(rng):
    body, glass, band = (
        pick(rng, ((235, 190, 30), (200, 40, 40), (40, 90, 190), (240, 240, 235)), 20),
        pick(rng, GLASS, 10),
        pick(rng, DARK, 10),
    )
    parts = [fill(rect(0.0, 0.04, 1.0, 0.86), body), fill(rect(0.0, 0.56, 1.0, 0.62), band)]
    for i in range(7):
        x0 = 0.04 + i * 0.132
        parts.append(fill(rect(x0, 0.14, x0 + 0.1, 0.44), glass))
    parts.append(fill(rect(0.9, 0.14, 0.97, 0.8), glass))
    return parts + _wheel(0.18, 0.86, 0.07, 0.14, rng) + _wheel(0.8, 0.86, 0.07, 0.14, rng)


@look("truck")
def _truck(rng):
    cab, box, glass = (
        pick(rng, BRIGHT, 25),
        pick(rng, ((230, 230, 225), (170, 170, 165), (120, 90, 60)), 15),
        pick(rng, GLASS, 10),
    )
    parts = [
        fill(rect(0.0, 0.05, 0.66, 0.78), box),
        line(((0.02, 0.3), (0.64, 0.3)), jitter(rng, (90, 90, 90)), 0.04),
        fill(((0.68, 0.78), (0.68, 0.24), (0.88, 0.24), (1.0, 0.5), (1.0, 0.78)), cab),
        fill(((0.72, 0.28), (0.86, 0.28), (0.95, 0.48), (0.72, 0.48)), glass),
    ]
    for x in (0.14, 0.34, 0.84):
        parts += _wheel(x, 0.82, 0.07, 0.15, rng)
    return parts


@look("traffic light", flip=False)
def _traffic_light(rng):
    housing = pick(rng, DARK + ((60, 70, 50),), 8)
    lit = int(rng.integers(3))
    colours = ((230, 40, 30), (240, 190, 30), (40, 200, 80))
    parts = [fill(rect(0.12, 0.0, 0.88, 0.82), housing), fill(rect(0.42, 0.82, 0.58, 1.0), pick(rng, METAL, 10))]
    for i, colour in enumerate(colours):
        shade = colour if i == lit else tuple(int(c * 0.35) for c in colour)
        parts.append(fill(ellipse(0.5, 0.14 + 0.27 * i, 0.28, 0.1, 12), shade))
    return parts


@look("fire hydrant")
def _fire_hydrant(rng):
    body = pick(rng, ((210, 35, 30), (230, 200, 40), (200, 60, 40)), 15)
    cap = jitter(rng, tuple(int(c * 0.75) for c in body), 8)
    return [
        fill(rect(0.2, 0.28, 0.8, 0.92), body),
        fill(ellipse(0.5, 0.28, 0.3, 0.16, 12, 180, 360), cap),
        fill(rect(0.44, 0.02, 0.56, 0.14), cap),
        fill(rect(0.0, 0.42, 0.22, 0.56), cap),
        fill(rect(0.78, 0.42, 1.0, 0.56), cap),
        fill(rect(0.12, 0.9, 0.88, 1.0), cap),
    ]


@look("stop sign", flip=False)
def _stop_sign(rng):
    red, white, pole = pick(rng, ((205, 25, 30),), 15), pick(rng, WHITE, 8), pick(rng, METAL, 10)
    octagon = ellipse(0.5, 0.28, 0.5, 0.28, 8, 22.5, 382.5)[:8]
    inner = ellipse(0.5, 0.28, 0.42, 0.235, 8, 22.5, 382.5)[:8]
    return [
        fill(rect(0.45, 0.5, 0.55, 1.0), pole),
        fill(octagon, white),
        fill(inner, red),
        fill(rect(0.22, 0.25, 0.78, 0.31), white),
    ]


@look("bench")
def _bench(rng):
    slat, leg = pick(rng, WOOD + ((40, 100, 60),), 15), pick(rng, DARK, 8)
    parts = [
        fill(rect(0.06, 0.55, 0.12, 1.0), leg),
        fill(rect(0.88, 0.55, 0.94, 1.0), leg),
        fill(rect(0.08, 0.05, 0.12, 0.55), leg),
        fill(rect(0.88, 0.05, 0.92, 0.55), leg),
    ]
    for y in (0.08, 0.24, 0.55, 0.66):
        parts.append(fill(rect(0.0, y, 1.0, y + 0.09), slat))
    return parts


@look("bird", rotate=12)
def _bird(rng):
    body, wing = (
        pick(rng, ((90, 90, 100), (170, 110, 60), (50, 80, 170), (220, 200, 60), (40, 40, 40)), 20),
        pick(rng, DARK + ((240, 240, 240),), 10),
    )
    return [
        fill(((0.0, 0.3), (0.22, 0.5), (0.12, 0.7)), body),
        fill(ellipse(0.45, 0.55, 0.32, 0.25), body),
        fill(ellipse(0.75, 0.35, 0.15, 0.2, 12), body),
        fill(((0.88, 0.3), (1.0, 0.4), (0.88, 0.44)), (240, 170, 30)),
        fill(((0.28, 0.5), (0.62, 0.42), (0.42, 0.12)), wing),
        fill(ellipse(0.79, 0.31, 0.03, 0.04, 6), (10, 10, 10)),
    ]


# --- animals -----------------------------------------------------------------------------------


FUR = ((200, 120, 40), (90, 85, 80), (230, 225, 215), (40, 35, 35), (160, 130, 90))


@look("cat")
def _cat(rng):
    fur, stripe = pick(rng, FUR, 15), pick(rng, DARK, 10)
    parts = [
        line(((0.12, 0.78), (0.04, 0.5), (0.08, 0.22), (0.16, 0.1)), fur, 0.09),
        fill(ellipse(0.42, 0.68, 0.32, 0.27), fur),
        fill(ellipse(0.73, 0.38, 0.19, 0.2), fur),
        fill(((0.57, 0.3), (0.6, 0.04), (0.7, 0.22)), fur),
        fill(((0.76, 0.22), (0.87, 0.04), (0.9, 0.3)), fur),
        fill(ellipse(0.68, 0.37, 0.025, 0.035, 6), (60, 170, 60)),
        fill(ellipse(0.8, 0.37, 0.025, 0.035, 6), (60, 170, 60)),
    ]
    for x in (0.3, 0.42, 0.54):  # tabby stripes
        parts.append(line(((x, 0.46), (x - 0.04, 0.66)), stripe, 0.05))
    return parts


@look("dog")
def _dog(rng):
    fur, ear = pick(rng, FUR, 15), pick(rng, DARK + ((120, 70, 30),), 10)
    parts = [
        fill(rect(0.16, 0.55, 0.25, 1.0), fur),
        fill(rect(0.3, 0.55, 0.38, 1.0), fur),
        fill(rect(0.55, 0.55, 0.63, 1.0), fur),
        fill(rect(0.67, 0.55, 0.75, 1.0), fur),
        line(((0.1, 0.42), (0.0, 0.25)), fur, 0.07),
        fill(ellipse(0.44, 0.5, 0.36, 0.18), fur),
        fill(ellipse(0.78, 0.3, 0.14, 0.17), fur),
        fill(rect(0.82, 0.3, 1.0, 0.42), fur),
        fill(ellipse(0.99, 0.32, 0.03, 0.04, 6), (15, 15, 15)),
        fill(ellipse(0.7, 0.33, 0.06, 0.16), ear),
        fill(ellipse(0.82, 0.25, 0.025, 0.035, 6), (15, 15, 15)),
    ]
    return parts


@look("umbrella", rotate=10)
def _umbrella(rng):
    a, b = pick(rng, BRIGHT, 20), pick(rng, BRIGHT + (WHITE[0],), 20)
    parts = [line(((0.5, 0.45), (0.5, 0.92), (0.58, 1.0), (0.64, 0.92)), pick(rng, DARK, 8), 0.05)]
    for i in range(6):
        start, end = 180 + i * 30, 180 + (i + 1) * 30
        wedge = ((0.5, 0.5), *ellipse(0.5, 0.5, 0.5, 0.5, 4, start, end))
        parts.append(fill(wedge, a if i % 2 == 0 else b))
    return parts


# --- kitchen -----------------------------------------------------------------------------------


@look("bottle", rotate=6)
def _bottle(rng):
    glass = pick(rng, ((40, 120, 50), (120, 70, 30), (150, 200, 220), (30, 80, 150)), 15)
    label, cap = pick(rng, WHITE + ((240, 220, 150),), 10), pick(rng, BRIGHT + DARK, 15)
    return [
        fill(
            (
                (0.08, 0.38),
                (0.35, 0.24),
                (0.35, 0.08),
                (0.65, 0.08),
                (0.65, 0.24),
                (0.92, 0.38),
                (0.92, 1.0),
                (0.08, 1.0),
            ),
            glass,
        ),
        fill(rect(0.08, 0.5, 0.92, 0.76), label),
        fill(rect(0.32, 0.0, 0.68, 0.1), cap),
    ]


@look("wine glass")
def _wine_glass(rng):
    rim, wine = (
        pick(rng, ((200, 220, 235), (180, 200, 220)), 10),
        pick(rng, ((130, 20, 40), (230, 220, 150), (170, 40, 80)), 15),
    )
    return [
        fill(ellipse(0.5, 0.05, 0.48, 0.5, 14, 0, 180), rim),
        fill(ellipse(0.5, 0.22, 0.43, 0.33, 12, 0, 180), wine),
        line(((0.5, 0.55), (0.5, 0.92)), rim, 0.12),
        fill(ellipse(0.5, 0.95, 0.38, 0.05, 10), rim),
    ]


@look("cup", rotate=5)
def _cup(rng):
    body = pick(rng, BRIGHT + WHITE + ((90, 60, 40),), 20)
    return [
        outline(ellipse(0.78, 0.5, 0.18, 0.2, 12), body, 0.12),
        fill(((0.06, 0.12), (0.76, 0.12), (0.7, 0.96), (0.12, 0.96)), body),
        fill(ellipse(0.41, 0.12, 0.35, 0.09, 12), jitter(rng, (70, 45, 30), 12)),
        fill(rect(0.1, 0.4, 0.72, 0.5), jitter(rng, tuple(int(c * 0.7) for c in body), 8)),
    ]


@look("fork", rotate=35)
def _fork(rng):
    metal = pick(rng, METAL, 12)
    parts = [
        fill(rect(0.38, 0.42, 0.62, 1.0), metal),
        fill(((0.08, 0.3), (0.92, 0.3), (0.7, 0.46), (0.3, 0.46)), metal),
    ]
    for x in (0.08, 0.33, 0.58, 0.83):
        parts.append(fill(rect(x, 0.0, x + 0.1, 0.32), metal))
    return parts


@look("knife", rotate=35)
def _knife(rng):
    metal, handle = pick(rng, METAL, 12), pick(rng, DARK + WOOD, 12)
    return [
        fill(((0.28, 0.62), (0.22, 0.12), (0.5, 0.0), (0.82, 0.1), (0.82, 0.62)), metal),
        fill(rect(0.18, 0.6, 0.86, 1.0), handle),
        fill(ellipse(0.52, 0.8, 0.08, 0.03, 6), metal),
    ]


@look("spoon", rotate=35)
def _spoon(rng):
    metal = pick(rng, METAL, 12)
    return [
        fill(rect(0.4, 0.35, 0.6, 1.0), metal),
        fill(ellipse(0.5, 0.2, 0.48, 0.2), metal),
        fill(ellipse(0.5, 0.22, 0.3, 0.12, 10), jitter(rng, (120, 122, 130), 8)),
    ]


@look("bowl")
def _bowl(rng):
    body = pick(rng, BRIGHT + WHITE + ((200, 180, 140),), 20)
    inside = jitter(rng, tuple(int(c * 0.72) for c in body), 8)
    food = pick(rng, ((230, 200, 120), (240, 240, 230), (200, 90, 40), (90, 160, 60)), 15)
    return [
        fill(ellipse(0.5, 0.3, 0.5, 0.66, 16, 0, 180), body),
        fill(ellipse(0.5, 0.3, 0.5, 0.2, 16), inside),
        fill(ellipse(0.5, 0.34, 0.36, 0.12, 12), food),
        fill(rect(0.32, 0.92, 0.68, 1.0), body),
    ]


@look("banana", rotate=30)
def _banana(rng):
    skin = pick(rng, ((240, 210, 50), (220, 200, 60), (180, 200, 60)), 12)
    arc_out = ellipse(0.5, 0.0, 0.5, 0.95, 14, 10, 170)
    arc_in = ellipse(0.5, 0.0, 0.36, 0.55, 14, 20, 160)[::-1]
    return [
        fill(arc_out + arc_in, skin),
        fill(ellipse(0.97, 0.17, 0.04, 0.1, 6), (90, 60, 20)),
        fill(ellipse(0.04, 0.17, 0.04, 0.1, 6), (90, 60, 20)),
    ]


@look("apple", rotate=15)
def _apple(rng):
    skin = pick(rng, ((200, 30, 35), (150, 200, 60), (220, 60, 40)), 15)
    return [
        fill(ellipse(0.32, 0.58, 0.3, 0.4) + ellipse(0.68, 0.58, 0.3, 0.4), skin),
        fill(ellipse(0.5, 0.58, 0.45, 0.42), skin),
        line(((0.5, 0.25), (0.55, 0.0)), (90, 60, 25), 0.08),
        fill(ellipse(0.7, 0.1, 0.14, 0.07, 8), (50, 150, 50)),
        fill(ellipse(0.36, 0.45, 0.07, 0.1, 6), jitter(rng, (250, 240, 220), 5)),
    ]


@look("pizza", rotate=180)
def _pizza(rng):
    crust, cheese = pick(rng, ((215, 160, 80), (190, 130, 60)), 12), pick(rng, ((245, 200, 70), (240, 180, 60)), 12)
    parts = [fill(ellipse(0.5, 0.5, 0.5, 0.5, 22), crust), fill(ellipse(0.5, 0.5, 0.42, 0.42, 20), cheese)]
    for k in range(3):
        angle = math.radians(k * 60 + rng.uniform(0, 10))
        parts.append(
            line(
                (
                    (0.5 + 0.42 * math.cos(angle), 0.5 + 0.42 * math.sin(angle)),
                    (0.5 - 0.42 * math.cos(angle), 0.5 - 0.42 * math.sin(angle)),
                ),
                crust,
                0.02,
            )
        )
    topping = pick(rng, ((180, 30, 30), (60, 110, 40), (60, 40, 30)), 12)
    for _ in range(int(rng.integers(5, 9))):
        r, a = 0.3 * math.sqrt(rng.uniform(0.05, 1)), rng.uniform(0, 2 * math.pi)
        parts.append(fill(ellipse(0.5 + r * math.cos(a), 0.5 + r * math.sin(a), 0.065, 0.065, 8), topping))
    return parts


@look("cake")
def _cake(rng):
    sponge, frosting = (
        pick(rng, ((120, 70, 40), (240, 220, 170), (240, 170, 190)), 15),
        pick(rng, ((250, 250, 245), (250, 190, 210), (110, 60, 35)), 12),
    )
    parts = [
        fill(rect(0.04, 0.3, 0.96, 0.92), sponge),
        fill(rect(0.04, 0.56, 0.96, 0.64), frosting),
        fill(ellipse(0.5, 0.3, 0.46, 0.1, 14), frosting),
        fill(rect(0.0, 0.9, 1.0, 1.0), jitter(rng, (235, 235, 235), 8)),
    ]
    for x in (0.3, 0.5, 0.7):
        parts.append(fill(rect(x - 0.02, 0.06, x + 0.02, 0.28), pick(rng, BRIGHT, 20)))
        parts.append(fill(ellipse(x, 0.04, 0.025, 0.04, 6), (250, 200, 60)))
    return parts


# --- furniture ---------------------------------------------------------------------------------


@look("chair")
def _chair(rng):
    frame, seat = pick(rng, WOOD + DARK, 15), pick(rng, WOOD + BRIGHT, 20)
    return [
        fill(rect(0.12, 0.0, 0.22, 1.0), frame),
        fill(rect(0.78, 0.0, 0.88, 1.0), frame),
        fill(rect(0.12, 0.04, 0.88, 0.16), frame),
        fill(rect(0.12, 0.26, 0.88, 0.34), frame),
        fill(rect(0.04, 0.5, 0.96, 0.6), seat),
        fill(rect(0.06, 0.6, 0.14, 1.0), frame),
        fill(rect(0.86, 0.6, 0.94, 1.0), frame),
    ]


@look("couch")
def _couch(rng):
    fabric = pick(rng, ((120, 60, 50), (60, 80, 120), (100, 110, 90), (170, 150, 120), (80, 80, 85)), 15)
    shade = jitter(rng, tuple(int(c * 0.75) for c in fabric), 6)
    return [
        fill(rect(0.06, 0.06, 0.94, 0.55), shade),
        fill(rect(0.04, 0.5, 0.96, 0.88), fabric),
        fill(rect(0.0, 0.3, 0.12, 0.9), shade),
        fill(rect(0.88, 0.3, 1.0, 0.9), shade),
        line(((0.5, 0.52), (0.5, 0.7)), shade, 0.03),
        line(((0.12, 0.52), (0.88, 0.52)), shade, 0.02),
        fill(rect(0.05, 0.88, 0.1, 1.0), pick(rng, DARK, 6)),
        fill(rect(0.9, 0.88, 0.95, 1.0), pick(rng, DARK, 6)),
    ]


@look("potted plant")
def _potted_plant(rng):
    pot, leaf = (
        pick(rng, ((190, 95, 55), (220, 220, 215), (70, 70, 75)), 15),
        pick(rng, ((50, 140, 60), (30, 110, 50), (90, 160, 70)), 15),
    )
    parts = [fill(((0.2, 0.62), (0.8, 0.62), (0.7, 1.0), (0.3, 1.0)), pot), fill(rect(0.16, 0.6, 0.84, 0.68), pot)]
    for k in range(7):
        angle = math.radians(-90 + (k - 3) * 24 + rng.uniform(-6, 6))
        cx, cy = 0.5 + 0.28 * math.cos(angle), 0.6 + 0.34 * math.sin(angle)
        parts.append(line(((0.5, 0.62), (cx, cy)), leaf, 0.05))
        parts.append(fill(ellipse(cx, cy, 0.12, 0.1, 10), jitter(rng, leaf, 12)))
    return parts


@look("dining table", flip=False)
def _dining_table(rng):
    top, cloth = pick(rng, WOOD + ((200, 200, 195),), 15), pick(rng, (WHITE[0], (200, 60, 60), (60, 100, 170)), 15)
    leg = jitter(rng, tuple(int(c * 0.7) for c in top), 6)
    parts = [
        fill(rect(0.04, 0.5, 0.1, 1.0), leg),
        fill(rect(0.9, 0.5, 0.96, 1.0), leg),
        fill(rect(0.22, 0.5, 0.27, 0.85), leg),
        fill(rect(0.73, 0.5, 0.78, 0.85), leg),
        fill(((0.1, 0.0), (0.9, 0.0), (1.0, 0.48), (0.0, 0.48)), top),
        fill(rect(0.0, 0.48, 1.0, 0.56), leg),
    ]
    if rng.random() < 0.5:  # a checked tablecloth runner
        for i in range(5):
            parts.append(
                fill(
                    ((0.3 + 0.08 * i, 0.04), (0.34 + 0.08 * i, 0.04), (0.34 + 0.08 * i, 0.46), (0.3 + 0.08 * i, 0.46)),
                    cloth,
                )
            )
    return parts


# --- electronics -------------------------------------------------------------------------------


SCREEN = ((60, 120, 200), (40, 160, 150), (200, 120, 60), (120, 80, 180), (60, 60, 70))


@look("tv", flip=False)
def _tv(rng):
    frame, screen = pick(rng, DARK, 8), pick(rng, SCREEN, 25)
    return [
        fill(rect(0.38, 0.8, 0.62, 0.92), frame),
        fill(rect(0.2, 0.92, 0.8, 1.0), frame),
        fill(rect(0.0, 0.0, 1.0, 0.82), frame),
        fill(rect(0.05, 0.06, 0.95, 0.75), screen),
        fill(((0.05, 0.06), (0.4, 0.06), (0.05, 0.4)), jitter(rng, tuple(min(255, c + 60) for c in screen), 6)),
    ]


@look("laptop")
def _laptop(rng):
    shell, screen = pick(rng, METAL + DARK, 12), pick(rng, SCREEN, 25)
    return [
        fill(rect(0.12, 0.0, 0.88, 0.6), shell),
        fill(rect(0.16, 0.05, 0.84, 0.55), screen),
        fill(((0.12, 0.6), (0.88, 0.6), (1.0, 0.96), (0.0, 0.96)), shell),
        fill(((0.15, 0.64), (0.85, 0.64), (0.9, 0.8), (0.1, 0.8)), jitter(rng, tuple(int(c * 0.8) for c in shell), 5)),
        fill(rect(0.4, 0.84, 0.6, 0.93), jitter(rng, tuple(int(c * 0.85) for c in shell), 5)),
    ]


@look("mouse", rotate=25)
def _mouse(rng):
    body = pick(rng, DARK + METAL + WHITE, 12)
    mark = (200, 200, 200) if sum(body) < 300 else (40, 40, 40)
    return [
        fill(ellipse(0.5, 0.5, 0.5, 0.5, 16), body),
        line(((0.5, 0.02), (0.5, 0.4)), mark, 0.08),
        line(((0.05, 0.4), (0.95, 0.4)), mark, 0.06),
        fill(rect(0.42, 0.12, 0.58, 0.28), mark),
    ]


@look("remote", rotate=35)
def _remote(rng):
    body = pick(rng, DARK + ((170, 170, 175),), 8)
    key = (210, 210, 215) if sum(body) < 300 else (40, 40, 45)
    parts = [
        fill(rect(0.0, 0.03, 1.0, 1.0), body),
        fill(ellipse(0.5, 0.03, 0.5, 0.03, 8), body),
        fill(ellipse(0.5, 0.1, 0.16, 0.04, 8), (220, 30, 30)),
    ]
    for row in range(5):
        for col in (0.28, 0.72):
            parts.append(fill(ellipse(col, 0.3 + row * 0.13, 0.14, 0.04, 6), key))
    return parts


@look("keyboard", rotate=6, flip=False)
def _keyboard(rng):
    body = pick(rng, DARK + METAL + WHITE, 10)
    key = (190, 190, 195) if sum(body) < 300 else (70, 70, 75)
    parts = [fill(rect(0.0, 0.0, 1.0, 1.0), body)]
    for row in range(4):
        for col in range(12):
            x, y = 0.03 + col * 0.08, 0.08 + row * 0.22
            parts.append(fill(rect(x, y, x + 0.06, y + 0.16), key))
    return parts


@look("cell phone", rotate=35)
def _cell_phone(rng):
    body, screen = pick(rng, DARK + ((200, 200, 205), (200, 60, 60)), 10), pick(rng, SCREEN, 30)
    return [
        fill(rect(0.0, 0.02, 1.0, 0.98), body),
        fill(ellipse(0.5, 0.02, 0.48, 0.02, 8), body),
        fill(rect(0.1, 0.1, 0.9, 0.84), screen),
        fill(ellipse(0.5, 0.91, 0.12, 0.04, 6), (120, 120, 125)),
    ]


@look("book", rotate=30)
def _book(rng):
    cover = pick(rng, BRIGHT + ((30, 60, 110), (110, 30, 30), (40, 90, 60)), 20)
    spine = jitter(rng, tuple(int(c * 0.6) for c in cover), 6)
    return [
        fill(rect(0.04, 0.0, 1.0, 0.96), (245, 240, 225)),
        fill(rect(0.0, 0.0, 0.94, 1.0), cover),
        fill(rect(0.0, 0.0, 0.14, 1.0), spine),
        fill(rect(0.28, 0.18, 0.8, 0.3), jitter(rng, (240, 230, 200), 10)),
        fill(rect(0.28, 0.36, 0.7, 0.4), jitter(rng, (240, 230, 200), 10)),
    ]


@look("clock", rotate=0, flip=False)
def _clock(rng):
    rim, face = pick(rng, DARK + WOOD + BRIGHT, 12), pick(rng, WHITE + ((245, 235, 200),), 8)
    parts = [fill(ellipse(0.5, 0.5, 0.5, 0.5, 24), rim), fill(ellipse(0.5, 0.5, 0.42, 0.42, 24), face)]
    for k in range(12):
        a = math.radians(k * 30)
        parts.append(fill(ellipse(0.5 + 0.34 * math.cos(a), 0.5 + 0.34 * math.sin(a), 0.03, 0.03, 5), (30, 30, 30)))
    for length, width in ((0.22, 0.07), (0.32, 0.045)):
        a = rng.uniform(0, 2 * math.pi)
        parts.append(line(((0.5, 0.5), (0.5 + length * math.cos(a), 0.5 + length * math.sin(a))), (20, 20, 20), width))
    return parts


@look("vase")
def _vase(rng):
    body = pick(rng, ((40, 90, 160), (180, 60, 50), (230, 230, 220), (60, 140, 130), (200, 160, 60)), 15)
    band = pick(rng, BRIGHT + WHITE, 20)
    outline_pts = (
        (0.34, 0.0),
        (0.66, 0.0),
        (0.6, 0.2),
        (0.96, 0.5),
        (0.86, 0.86),
        (0.7, 1.0),
        (0.3, 1.0),
        (0.14, 0.86),
        (0.04, 0.5),
        (0.4, 0.2),
    )
    return [
        fill(outline_pts, body),
        fill(((0.1, 0.44), (0.9, 0.44), (0.95, 0.56), (0.05, 0.56)), band),
        fill(rect(0.3, 0.0, 0.7, 0.05), jitter(rng, tuple(int(c * 0.7) for c in body), 5)),
    ]
