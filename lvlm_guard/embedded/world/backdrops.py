"""Backgrounds that hint the scene type: tiles for kitchens, a desk for offices, road and sky for
streets, wallpaper and floor for living rooms.

A real photo's background tells a model where it is before any object is recognised; that is the
context a language prior feeds on, so the world keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from lvlm_guard.embedded.world.looks import jitter, pick

Painter = Callable[[ImageDraw.ImageDraw, int, float, np.random.Generator], None]
BACKDROPS: dict[str, Painter] = {}


def backdrop(scene: str):
    def register(fn: Painter) -> Painter:
        BACKDROPS[scene] = fn
        return fn

    return register


def paint_backdrop(scene: str, side: int, ground_line: float, seed: int) -> Image.Image:
    """A `side` x `side` RGB background for `scene`, the same for the same seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (side, side))
    BACKDROPS[scene](ImageDraw.Draw(image), side, ground_line, rng)
    return image


def _vertical_gradient(draw: ImageDraw.ImageDraw, box, top, bottom, steps: int = 16) -> None:
    x0, y0, x1, y1 = box
    for i in range(steps):
        t = i / max(steps - 1, 1)
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom))
        draw.rectangle((x0, y0 + (y1 - y0) * i / steps, x1, y0 + (y1 - y0) * (i + 1) / steps), fill=colour)


@backdrop("kitchen")
def _kitchen(draw, side, ground, rng):
    tile = pick(rng, ((225, 230, 225), (200, 225, 235), (240, 225, 200)), 12)
    grout = tuple(int(c * 0.8) for c in tile)
    horizon = side * ground
    draw.rectangle((0, 0, side, horizon), fill=tile)
    step = side / float(rng.integers(8, 12))
    for i in range(1, int(side / step) + 1):
        draw.line((0, i * step, side, i * step), fill=grout, width=max(1, side // 160))
        draw.line((i * step, 0, i * step, horizon), fill=grout, width=max(1, side // 160))
    counter = pick(rng, ((110, 90, 80), (170, 170, 165), (60, 60, 65)), 12)
    draw.rectangle((0, horizon, side, side), fill=counter)
    draw.rectangle((0, horizon, side, horizon + side * 0.03), fill=tuple(int(c * 0.7) for c in counter))


@backdrop("office")
def _office(draw, side, ground, rng):
    wall = pick(rng, ((200, 205, 215), (225, 220, 205), (180, 195, 200)), 12)
    horizon = side * ground
    _vertical_gradient(draw, (0, 0, side, horizon), wall, tuple(int(c * 0.9) for c in wall))
    if rng.random() < 0.5:  # a window
        x = rng.uniform(0.05, 0.6) * side
        draw.rectangle((x, side * 0.08, x + side * 0.3, side * 0.38), fill=(235, 240, 245))
        draw.rectangle(
            (x + side * 0.02, side * 0.1, x + side * 0.28, side * 0.36), fill=jitter(rng, (150, 195, 235), 15)
        )
        draw.line(
            (x + side * 0.15, side * 0.1, x + side * 0.15, side * 0.36), fill=(235, 240, 245), width=max(1, side // 100)
        )
    desk = pick(rng, ((190, 190, 185), (235, 235, 230), (140, 140, 145)), 10)
    draw.rectangle((0, horizon, side, side), fill=desk)
    draw.rectangle((0, horizon, side, horizon + side * 0.02), fill=tuple(int(c * 0.65) for c in desk))


@backdrop("street")
def _street(draw, side, ground, rng):
    horizon = side * ground
    sky = pick(rng, ((120, 170, 230), (170, 190, 210), (200, 210, 225)), 15)
    _vertical_gradient(draw, (0, 0, side, horizon), sky, tuple(min(255, c + 40) for c in sky))
    x = 0.0
    while x < side:  # a skyline of buildings
        w = rng.uniform(0.12, 0.3) * side
        top = rng.uniform(0.08, 0.3) * side
        colour = pick(rng, ((150, 120, 100), (120, 120, 125), (180, 170, 150), (100, 90, 85)), 15)
        draw.rectangle((x, top, x + w, horizon), fill=colour)
        for wy in np.arange(top + side * 0.03, horizon - side * 0.04, side * 0.06):
            for wx in np.arange(x + side * 0.02, x + w - side * 0.03, side * 0.05):
                draw.rectangle((wx, wy, wx + side * 0.02, wy + side * 0.03), fill=tuple(int(c * 0.6) for c in colour))
        x += w
    draw.rectangle((0, horizon, side, horizon + side * 0.08), fill=jitter(rng, (175, 175, 170), 10))
    road = jitter(rng, (80, 80, 85), 10)
    draw.rectangle((0, horizon + side * 0.08, side, side), fill=road)
    lane_y = horizon + (side - horizon) * 0.55
    for lx in np.arange(rng.uniform(0, 0.1) * side, side, side * 0.16):
        draw.rectangle((lx, lane_y, lx + side * 0.08, lane_y + side * 0.015), fill=(235, 235, 225))


@backdrop("living room")
def _living_room(draw, side, ground, rng):
    horizon = side * ground
    paper = pick(rng, ((210, 190, 160), (190, 210, 190), (200, 190, 210), (230, 225, 210)), 12)
    draw.rectangle((0, 0, side, horizon), fill=paper)
    stripe = tuple(int(c * 0.9) for c in paper)
    step = side / float(rng.integers(10, 18))
    for x in np.arange(0, side, step * 2):
        draw.rectangle((x, 0, x + step, horizon), fill=stripe)
    floor = pick(rng, ((150, 105, 65), (120, 85, 55), (170, 150, 130), (110, 60, 60)), 12)
    draw.rectangle((0, horizon, side, side), fill=floor)
    for y in np.arange(horizon + side * 0.06, side, side * 0.08):
        draw.line((0, y, side, y), fill=tuple(int(c * 0.82) for c in floor), width=max(1, side // 200))
