"""VL-SAM prompt generation: positive/negative points from a map, and a box from a map.

Pinned from the paper (Sec. 3.3): the positive point is the map's peak; negative points come from
the low-attention region; prompts are refined iteratively with SAM's own output (the mask of one
round restricts where the next round's positive point may lie, and its logits are fed back as
the mask prompt). Counts and thresholds are not given in the text; they are `PromptConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvlm_guard.errors import InputMismatchError, InterventionConfigError


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
