"""VL-SAM prompt generation: positive/negative points from a map, and a box from a map.

Paper (Sec. 3.3): the map is thresholded, the largest connected region is the positive area, the
positive point is the map's maximum inside it, the negative point the map's minimum
(`region_points`); after SAM's first mask, the map is masked by it and the points sampled again
(`masked_points`). The threshold is not given in the text; it is `VLSamConfig.threshold`.

`sample_points` / `PromptConfig` are our earlier rule (several spaced peaks and low-region
negatives), still used by `SamRunner.segment` and `locate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lvlm_guard.errors import InputMismatchError, InterventionConfigError
from lvlm_guard.methods.vlsam.regions import largest_region


@dataclass(frozen=True)
class PromptConfig:
    """positives/negatives: points per round; low: negatives are drawn where map <= low * max;
    min_distance: fraction of the image diagonal kept between points of one kind;
    rounds: SAM rounds (1 = no refinement); box_threshold: map fraction for `box_from_map`."""

    positives: int = 1
    negatives: int = 2
    low: float = 0.2
    min_distance: float = 0.15
    rounds: int = 2
    box_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.positives < 1 or self.negatives < 0 or self.rounds < 1:
            raise InterventionConfigError("PromptConfig: need positives >= 1, negatives >= 0, rounds >= 1")
        if not 0.0 < self.box_threshold <= 1.0 or not 0.0 <= self.low < 1.0:
            raise InterventionConfigError("PromptConfig: box_threshold in (0, 1], low in [0, 1)")


DEFAULT_PROMPTS = PromptConfig()


def _spaced(order: torch.Tensor, width: int, count: int, min_dist: float) -> list[tuple[int, int]]:
    """The first `count` pixels of `order` (flat indices) at least `min_dist` apart, as (x, y)."""
    chosen: list[tuple[int, int]] = []
    for flat in order.tolist():
        y, x = divmod(int(flat), width)
        if all((x - cx) ** 2 + (y - cy) ** 2 >= min_dist**2 for cx, cy in chosen):
            chosen.append((x, y))
            if len(chosen) == count:
                break
    return chosen


def sample_points(
    heatmap: torch.Tensor, cfg: PromptConfig = DEFAULT_PROMPTS, region: torch.Tensor | None = None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(positive, negative) pixel points (x, y) from a `[H, W]` map.

    Positives: the highest pixels (inside `region` when given: the refinement step). Negatives:
    the lowest pixels, only where the map is <= `low` * max and outside `region`.
    """
    if heatmap.dim() != 2:
        raise InputMismatchError(f"sample_points: map must be [H, W], got {tuple(heatmap.shape)}")
    h, w = heatmap.shape
    flat = heatmap.reshape(-1).float()
    min_dist = cfg.min_distance * (h * h + w * w) ** 0.5
    pos_scores = flat.clone()
    if region is not None and bool(region.any()):
        pos_scores[~region.reshape(-1)] = float("-inf")
    positives = _spaced(torch.argsort(pos_scores, descending=True, stable=True), w, cfg.positives, min_dist)
    neg_ok = flat <= cfg.low * flat.max()
    if region is not None:
        neg_ok &= ~region.reshape(-1)
    neg_scores = torch.where(neg_ok, flat, torch.full_like(flat, float("inf")))
    order = torch.argsort(neg_scores, stable=True)[: int(neg_ok.sum())]
    negatives = _spaced(order, w, cfg.negatives, min_dist) if cfg.negatives else []
    return positives, negatives


def box_from_map(heatmap: torch.Tensor, threshold: float = 0.5) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the pixels >= threshold * max, in the map's pixel frame."""
    hot = heatmap >= threshold * heatmap.max()
    ys, xs = torch.nonzero(hot, as_tuple=True)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


@dataclass(frozen=True)
class PointPrompt:
    """One positive and one negative point (x, y) and the positive region `[H, W]` bool they came from."""

    positive: tuple[int, int]
    negative: tuple[int, int]
    region: np.ndarray


def _first_extreme(values: np.ndarray, where: np.ndarray, largest: bool) -> tuple[int, int]:
    """(x, y) of the largest (or smallest) value among `where`; ties: first in raster order."""
    flat = values.reshape(-1)
    keep = where.reshape(-1)
    masked = np.where(keep, flat, -np.inf if largest else np.inf)
    index = int(np.argmax(masked) if largest else np.argmin(masked))
    y, x = divmod(index, values.shape[1])
    return x, y


def region_points(heatmap, threshold: float = 0.5, connected_region: bool = True) -> PointPrompt:
    """VL-SAM's prompt generation (paper Sec. 3.3, "Prompt Generation").

    The map is thresholded at `threshold` * max (the paper thresholds but gives no value; ours is
    calibrated, see `VLSamConfig.threshold`); the positive region is the largest connected region of
    what is left (`regions.largest_region`, 4-connected, ties first in raster order); the positive
    point is the map's maximum inside that region, the negative point the map's global minimum.
    Ties between pixels: the first in raster order.

    `connected_region=False` is our earlier rule, kept for the ablation: the region is every pixel
    over the threshold, so the positive point is the global maximum.
    """
    values = _as_numpy(heatmap)
    hot = values >= threshold * values.max()
    region = largest_region(hot) if connected_region else hot
    everywhere = np.ones_like(hot)
    return PointPrompt(_first_extreme(values, region, True), _first_extreme(values, everywhere, False), region)


def masked_points(heatmap, mask, threshold: float = 0.5, connected_region: bool = True) -> PointPrompt:
    """Points re-sampled from the map masked by a segmentation (paper Sec. 3.3, second refinement stage).

    The paper "filters the attention map with the mask and samples the points again" without more
    detail; what we do: M' = M * mask, and `region_points` on M' gives the positive point (so it lies
    inside the mask); the negative point is the minimum of M outside the mask (M' is 0 everywhere
    outside the mask, so this is M's global minimum under that tie-break), or M's global minimum
    when the mask covers the whole image. An empty mask leaves the map as it is.
    """
    values = _as_numpy(heatmap)
    inside = np.asarray(mask, dtype=bool)
    if not inside.any():
        return region_points(values, threshold, connected_region)
    masked = values * inside
    found = region_points(masked, threshold, connected_region)
    outside = ~inside
    negative = _first_extreme(values, outside, False) if outside.any() else found.negative
    return PointPrompt(found.positive, negative, found.region & inside)


def _as_numpy(heatmap) -> np.ndarray:
    values = heatmap.detach().cpu().double().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    if values.ndim != 2:
        raise InputMismatchError(f"prompt points: map must be [H, W], got shape {values.shape}")
    return values.astype(np.float64, copy=False)
