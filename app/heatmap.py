"""Attention maps drawn over the image: pure functions from a `[H, W]` map to an RGB picture."""

from __future__ import annotations

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


def answer_words(answer: str) -> list[str]:
    """Distinct alphabetic words of an answer, in order (the choices for a heatmap)."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[A-Za-z]+", answer):
        seen.setdefault(word, None)
    return list(seen)


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
