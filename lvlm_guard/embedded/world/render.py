"""Draw a sampled scene and measure what of each object is visible.

Objects are drawn back to front at `supersample` times the output size and box-filtered down, which
anti-aliases edges the way a camera would. The annotation of an object is its outline (the convex
hull of its parts, clipped to the frame): `bbox` and `segmentation` follow that outline like COCO's
polygons do, while `area` is the outline's area times the share of its pixels that nothing in front
covers, so an occluded object has a smaller area than its outline. Objects that are almost hidden
are left out of the annotations entirely: an annotation must be something one can see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from lvlm_guard.embedded.world.backdrops import paint_backdrop
from lvlm_guard.embedded.world.categories import category
from lvlm_guard.embedded.world.looks import look_of
from lvlm_guard.embedded.world.scenes import PlacedObject, Scene, scene_type

Point = tuple[float, float]


@dataclass(frozen=True)
class RenderConfig:
    """Output size and the visibility thresholds below which an object is not annotated."""

    size: int = 224  # LLaVA-style encoders here take 224 px
    supersample: int = 2
    min_visible_fraction: float = 0.25
    min_visible_pixels: int = 12
    occluded_below: float = 0.85  # visible fraction under which an object counts as occluded


@dataclass(frozen=True)
class ObjectAnnotation:
    """One visible object, in output pixels."""

    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h
    area: float  # outline area times the visible share of its pixels
    segmentation: tuple[float, ...]  # one polygon, x1, y1, x2, y2, ...
    occluded: bool
    visible_fraction: float


@dataclass(frozen=True)
class RenderedImage:
    image: Image.Image
    annotations: tuple[ObjectAnnotation, ...]


def render_scene(scene: Scene, config: RenderConfig = RenderConfig()) -> RenderedImage:
    """The image of `scene` and the annotations of its visible objects; same scene, same bytes."""
    side = config.size * config.supersample
    canvas = paint_backdrop(scene.scene_type, side, scene_type(scene.scene_type).ground_line, scene.backdrop_seed)
    draw = ImageDraw.Draw(canvas)
    owner = Image.new("L", (config.size, config.size), 255)  # index of the front-most object per pixel
    owner_draw = ImageDraw.Draw(owner)
    outlines: list[list[Point]] = []
    alone: list[int] = []  # pixels of each outline with nothing in front
    for index, obj in enumerate(scene.objects):
        hull = _draw_object(draw, obj, side)
        clipped = _clip_to_frame([(x / config.supersample, y / config.supersample) for x, y in hull], config.size)
        outline = [(round(x, 2), round(y, 2)) for x, y in clipped]
        outlines.append(outline)
        alone.append(_raster_count(outline, config.size))
        if len(outline) >= 3:
            owner_draw.polygon(outline, fill=index)
    visible = np.bincount(np.asarray(owner).ravel(), minlength=256)
    annotations = []
    for index, (obj, outline) in enumerate(zip(scene.objects, outlines)):
        if len(outline) < 3:
            continue
        pixels = int(visible[index])
        fraction = pixels / max(alone[index], 1)
        if pixels < config.min_visible_pixels or fraction < config.min_visible_fraction:
            continue
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        bbox = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
        annotations.append(
            ObjectAnnotation(
                category(obj.name).id,
                tuple(round(v, 2) for v in bbox),
                round(_polygon_area(outline) * fraction, 2),  # the outline's area, less what is covered
                tuple(v for p in outline for v in p),
                fraction < config.occluded_below,
                round(fraction, 3),
            )
        )
    image = canvas.reduce(config.supersample) if config.supersample > 1 else canvas
    return RenderedImage(image, tuple(annotations))


def _draw_object(draw: ImageDraw.ImageDraw, obj: PlacedObject, side: int) -> list[Point]:
    """Paint one object's parts; return the convex hull of everything painted, in canvas pixels."""
    look = look_of(obj.name)
    parts = look.draw(np.random.default_rng(obj.style_seed))
    x, y, w, h = (v * side for v in obj.box)
    cx, cy = x + w / 2, y + h / 2
    cos, sin = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
    mirror = -1.0 if obj.flip and look.flippable else 1.0
    shorter = min(w, h)
    painted: list[Point] = []
    for part in parts:
        points = []
        for u, v in part.points:
            dx, dy = (u - 0.5) * w * mirror, (v - 0.5) * h
            points.append((cx + dx * cos + dy * sin, cy - dx * sin + dy * cos))
        width = max(1, round(part.width * shorter))
        if part.kind == "fill":
            draw.polygon(points, fill=part.colour)
        elif part.kind == "line":
            draw.line(points, fill=part.colour, width=width, joint="curve")
        else:
            draw.polygon(points, outline=part.colour, width=width)
        painted.extend(points)
    return _convex_hull(painted)


def _raster_count(outline: list[Point], size: int) -> int:
    """Pixels the outline covers when drawn alone, rasterised the way the owner map is."""
    if len(outline) < 3:
        return 0
    mask = Image.new("1", (size, size), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=1)
    return int(np.count_nonzero(np.asarray(mask)))


def _convex_hull(points: list[Point]) -> list[Point]:
    """Andrew's monotone chain, counter-clockwise in image coordinates."""
    pts = sorted(set(points))
    if len(pts) <= 2:
        return pts

    def cross(o: Point, a: Point, b: Point) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[Point] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[Point] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _clip_to_frame(polygon: list[Point], size: int) -> list[Point]:
    """Sutherland-Hodgman clipping of a convex polygon to the square [0, size]^2."""
    edges = (
        (lambda p: p[0] >= 0, lambda a, b: _cut_x(a, b, 0.0)),
        (lambda p: p[0] <= size, lambda a, b: _cut_x(a, b, float(size))),
        (lambda p: p[1] >= 0, lambda a, b: _cut_y(a, b, 0.0)),
        (lambda p: p[1] <= size, lambda a, b: _cut_y(a, b, float(size))),
    )
    out = polygon
    for inside, cut in edges:
        if not out:
            break
        points, out = out, []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if inside(current):
                if not inside(previous):
                    out.append(cut(previous, current))
                out.append(current)
            elif inside(previous):
                out.append(cut(previous, current))
    return out


def _cut_x(a: Point, b: Point, x: float) -> Point:
    t = (x - a[0]) / (b[0] - a[0])
    return (x, a[1] + t * (b[1] - a[1]))


def _cut_y(a: Point, b: Point, y: float) -> Point:
    t = (y - a[1]) / (b[1] - a[1])
    return (a[0] + t * (b[0] - a[0]), y)


def _polygon_area(polygon: list[Point]) -> float:
    return 0.5 * abs(sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(polygon, polygon[1:] + polygon[:1])))
