"""Attention maps drawn over the image: pure functions from a `[H, W]` map to an RGB picture, the
colour bar that reads it, and the answer words worth mapping (stop words left out)."""

from __future__ import annotations

import io
import re

import numpy as np
import torch
from PIL import Image, ImageDraw

from lvlm_guard.errors import InputMismatchError


def normalize(heat: torch.Tensor) -> np.ndarray:
    """Map to [0, 1] (min-max); a constant map becomes zeros rather than NaN."""
    values = heat.detach().to(torch.float64).cpu().numpy()
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high - low <= 0 else (values - low) / (high - low)


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """`image` blended with the coloured map; the map is resized to the image when sizes differ."""
    import matplotlib

    if heat.ndim != 2:
        raise InputMismatchError(f"overlay: expected an [H, W] map, got shape {tuple(heat.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise InputMismatchError(f"overlay: alpha must be in [0, 1], got {alpha}")
    rgb = image.convert("RGB")
    scaled = normalize(heat)
    if scaled.shape != (rgb.height, rgb.width):
        grey = Image.fromarray((scaled * 255).astype(np.uint8)).resize(rgb.size, Image.BILINEAR)
        scaled = np.asarray(grey, dtype=np.float64) / 255.0
    coloured = matplotlib.colormaps[cmap](scaled)[..., :3]
    base = np.asarray(rgb, dtype=np.float64) / 255.0
    blended = (1 - alpha) * base + alpha * coloured
    return Image.fromarray(np.clip(blended * 255 + 0.5, 0, 255).astype(np.uint8))


def draw_point_box(image: Image.Image, point: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
    """VL-SAM's peak point and box drawn on a copy of `image`."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    radius = max(2, min(out.size) // 60)
    x, y = point
    draw.rectangle(box, outline=(255, 255, 0), width=max(1, radius // 2))
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 0, 255), outline=(0, 0, 0))
    return out


# Function words an attention map says nothing about (our own short list: articles, pronouns,
# auxiliaries, prepositions, conjunctions and the answers' stock phrases "there is", "can be seen").
STOP_WORDS = frozenset(
    """a an the this that these those there here it its they them their he she his her we you i me my our
    is are was were be been being am has have had do does did can could may might will would shall should
    of in on at to from by with without for about into onto over under near next above below behind
    between beside besides around through up down out off and or but nor so yet if then than as also
    too very not no yes some any all each both few more most other such only own same just
    what which who whom whose where when why how image picture photo seen see looks look like""".split()
)


def answer_words(answer: str) -> list[str]:
    """Distinct alphabetic words of an answer, in order, without stop words (the heatmap's choices)."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[A-Za-z]+", answer):
        if word.lower() not in STOP_WORDS:
            seen.setdefault(word, None)
    return list(seen)


def colorbar(low: float, high: float, cmap: str = "jet", width: int = 320) -> Image.Image:
    """A horizontal colour bar of `cmap` from `low` (left) to `high` (right), labelled, for the map
    drawn by `overlay` (which stretches `[low, high]` to the colour map's full range)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the page runs headless
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(width / dpi, 0.75), dpi=dpi)
    axes = figure.add_axes((0.04, 0.55, 0.92, 0.35))
    bar = figure.colorbar(
        ScalarMappable(Normalize(low, high), matplotlib.colormaps[cmap]), cax=axes, orientation="horizontal"
    )
    bar.set_ticks([low, high], labels=[f"{low:.3g} (least)", f"{high:.3g} (most attention)"])
    bar.ax.tick_params(labelsize=7)
    for label, align in zip(bar.ax.get_xticklabels(), ("left", "right")):
        label.set_horizontalalignment(align)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def heat_range(heat: torch.Tensor) -> tuple[float, float]:
    """The map's `(min, max)`: what the colour bar's ends stand for."""
    values = heat.detach().to(torch.float64)
    return float(values.min()), float(values.max())


def draw_mask(
    image: Image.Image, mask, color: tuple[int, int, int] = (0, 200, 255), alpha: float = 0.45
) -> Image.Image:
    """`image` with SAM's `[H, W]` bool mask blended in `color` (pixels outside the mask unchanged)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    inside = np.asarray(mask, dtype=bool)
    if inside.shape != base.shape[:2]:
        raise ValueError(f"mask {inside.shape} does not match the image {base.shape[:2]}")
    blended = np.where(inside[..., None], (1 - alpha) * base + alpha * np.asarray(color, dtype=np.float64), base)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
