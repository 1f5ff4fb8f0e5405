"""VL-SAM attention maps: head weighting and regularized attention flow (pure tensor functions).

Source. Lin, Wang, Tang, "Training-Free Open-Ended Object Detection and Segmentation via Attention
as Prompts", NeurIPS 2024, arXiv 2410.05963 (https://arxiv.org/abs/2410.05963), Sec. 3.2. The
official code is not public. The formulas below were checked on 2026-12-01 against a public
paper note that restates Sec. 3.2's equations (public code index, file id 54531052963; its own
link: https://proceedings.neurips.cc/paper_files/paper/2024/hash/80f48ffa8022773973a4a5cec7cce19c-Abstract-Conference.html)
and the figure captions of https://github.com/deep-diver/neurips2024 (content/posters/XXVfj4P8nr);
the arXiv page itself (https://arxiv.org/html/2410.05963v1) was only reachable up to its abstract.

- S `[N, N, H, L]`: softmax(QK^T) under the causal mask, every layer and head, whole sequence.
- Head weighting ("MeanMax", Eq. 1-2): W = Mean(Max(S, dim=1), dim=0), i.e. for each head the
  mean over query rows of the row's largest probability; S' = Mean(S * W, dim=heads).
- Attention flow (Eq. 3): S~_l = (I + S'_l)(I + S~_{l-1}), an identity added to both the layer's
  map and the running flow, no re-normalization (this is *not* the product R_l = A_l R_{l-1} we
  had before; expanded it is I + A_l + R_{l-1} + A_l R_{l-1}, so every layer's own map also
  enters the sum once, not only through products).
- Regularization against the causal "attention collapse" onto the first tokens: a column whose
  unmasked length (rows that may attend to it) is L0 is multiplied by 1 - (L0 - 1) / N; under a
  causal mask column j (0-based) gets (j + 1) / N. It is applied to every layer's S' here (the
  text does not say more precisely where). The denominator is open: the note we read writes
  1 - (L0 - 1) / L, and L is the number of layers in its own notation for S `[N, N, H, L]`; we take
  N (tokens), because with L (8 here, 32 in the paper) the factor is negative for every column
  with L0 > L + 1, i.e. nearly all of them. `FlowConfig.regularize_denominator="layers"` is that
  literal reading (factor clamped at 0), kept so the choice is visible and testable.
- The map: the object word's rows of S~_L, the image tokens' columns.

Our earlier version had R_l = A_l R_{l-1}, a factor 1 - L0/N (the first column zeroed) and rows
re-normalized; on the embedded 8-layer model it collapsed onto the first image token.

Beyond the paper (`FlowConfig` options, chosen on the calibration split): Abnar & Zuidema's rollout
((1 - r) A + r I, re-normalized rows), a plain layer sum, the flow restricted to image tokens
(paths word -> image -> ... -> image), and a layer window [start_layer, end_layer).

Memory: `FlowTaps` folds each layer into the running flow(s) as the layer is computed, so per
flow only one `[N, N]` matrix is kept, never the attention of all layers and heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lvlm_guard.engine.taps import Taps
from lvlm_guard.errors import InputMismatchError, InterventionConfigError

COMBINES = ("paper", "rollout", "sum")
HEAD_WEIGHTINGS = ("mean-max", "uniform")


@dataclass(frozen=True)
class FlowConfig:
    """How attention of all layers becomes one map.

    head_weighting: "mean-max" (paper Eq. 1) or "uniform" (plain head mean).
    combine: "paper" S~_l = (I + A_l)(I + S~_{l-1}) (paper Eq. 3); "rollout" R_l = ((1 - r) A_l + r I)
        R_{l-1} (Abnar & Zuidema 2020, r = `residual`); "sum" R = sum_l A_l (no flow, an ablation).
    regularize: the paper's column factor 1 - (L0 - 1) / N, applied to each layer's map.
    residual: r of "rollout" (Abnar & Zuidema use 0.5); ignored by the other combines.
    renormalize: re-normalize each layer's rows after regularization / restriction (our choice;
        the paper has none; rollout needs it to stay a mixing of rows).
    image_only: keep only image-token columns of every layer's map, so the flow passes through
        image tokens only (our option; the paper propagates over the whole sequence).
    start_layer, end_layer: only layers [start_layer, end_layer) take part (end None: the last).
    regularize_denominator: "tokens" 1 - (L0 - 1)/N (our reading), or "layers" 1 - (L0 - 1)/L with L
        the number of layers, clamped at 0 (the note's literal "/L"); the source is open on this.

    Defaults: the paper's flow (Sec. 3.2). Our calibration (tiny-coco calib split, 80 images,
    results/vlsam/vlsam.md) picked `combine="sum", renormalize=True, image_only=True` by
    pointing (0.279 vs 0.248), but on the test split the two are equal (0.289 vs 0.284, paired
    CI covers 0), so the default stays the paper's.
    """

    head_weighting: str = "mean-max"
    combine: str = "paper"
    regularize: bool = True
    residual: float = 0.5
    renormalize: bool = False
    image_only: bool = False
    start_layer: int = 0
    end_layer: int | None = None
    regularize_denominator: str = "tokens"  # open in the source, see the module docstring

    def __post_init__(self) -> None:
        if self.regularize_denominator not in ("tokens", "layers"):
            raise InterventionConfigError(
                f"FlowConfig: regularize_denominator must be 'tokens' or 'layers', got {self.regularize_denominator!r}"
            )
        if self.head_weighting not in HEAD_WEIGHTINGS:
            raise InterventionConfigError(f"FlowConfig: unknown head_weighting {self.head_weighting!r}")
        if self.combine not in COMBINES:
            raise InterventionConfigError(f"FlowConfig: unknown combine {self.combine!r}; one of {COMBINES}")
        if not 0.0 <= self.residual <= 1.0:
            raise InterventionConfigError(f"FlowConfig: residual must be in [0, 1], got {self.residual}")
        if self.start_layer < 0 or (self.end_layer is not None and self.end_layer <= self.start_layer):
            raise InterventionConfigError(
                f"FlowConfig: empty layer window start_layer={self.start_layer} end_layer={self.end_layer}"
            )

    def uses_layer(self, layer: int) -> bool:
        return layer >= self.start_layer and (self.end_layer is None or layer < self.end_layer)


DEFAULT_FLOW = FlowConfig()


def head_weights(probs: torch.Tensor, allowed: torch.Tensor | None = None, how: str = "mean-max") -> torch.Tensor:
    """`[H]` weights of the heads of one layer from probabilities `[H, N, N]` (rows: queries).

    `allowed` `[N]` bool marks real (non-padding) query rows; only those are averaged.
    """
    heads = probs.shape[0]
    if how == "uniform":
        return torch.ones(heads, dtype=probs.dtype, device=probs.device)
    peak = probs.amax(dim=-1)  # [H, N]
    if allowed is None:
        return peak.mean(dim=-1)
    rows = allowed.to(probs.dtype)
    return (peak * rows).sum(dim=-1) / rows.sum().clamp_min(1)


def aggregate_heads(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A_l = mean_h(w_h * S_l[h]): `[H, N, N]` and `[H]` -> `[N, N]`."""
    return (probs * weights[:, None, None]).mean(dim=0)


def regularize_columns(
    layer_map: torch.Tensor, allowed: torch.Tensor, denominator: float | None = None
) -> torch.Tensor:
    """Scale column j by 1 - (L0_j - 1) / D, L0_j = how many rows may attend to key j (Sec. 3.2).

    `allowed` `[N, N]` bool is the attention mask (row i may see key j). D: N, the real rows, when
    `denominator` is None (our reading); else the number given (the number of layers for the
    note's literal "/L"), and the factor is clamped at 0 so no column turns negative.
    """
    n = allowed.any(dim=-1).sum().clamp_min(1).to(layer_map.dtype) if denominator is None else denominator
    seen_by = allowed.to(layer_map.dtype).sum(dim=0)  # [N]
    return layer_map * (1.0 - (seen_by - 1.0).clamp_min(0) / n).clamp_min(0)[None, :]


def prepare_layer(
    layer_map: torch.Tensor,
    allowed: torch.Tensor,
    cfg: FlowConfig,
    image_tokens: torch.Tensor | None = None,
    num_layers: int | None = None,
) -> torch.Tensor:
    """A'_l: one layer's head-aggregated map after regularization, restriction, re-normalization.

    `num_layers`: L, needed only by `regularize_denominator="layers"`."""
    a = layer_map
    if cfg.regularize:
        if cfg.regularize_denominator == "layers" and num_layers is None:
            raise InputMismatchError("attention flow: regularize_denominator='layers' needs the number of layers")
        a = regularize_columns(a, allowed, float(num_layers) if cfg.regularize_denominator == "layers" else None)
    if cfg.image_only:
        if image_tokens is None:
            raise InputMismatchError("attention flow: image_only needs the image-token mask")
        a = a * image_tokens.to(a.dtype)[None, :]
    if cfg.renormalize:
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return a


def flow_step(running: torch.Tensor | None, a: torch.Tensor, cfg: FlowConfig) -> torch.Tensor:
    """Fold one prepared layer map A' `[N, N]` into the running flow (None before the first)."""
    if cfg.combine == "rollout":
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        a = (1.0 - cfg.residual) * a + cfg.residual * eye
        return a if running is None else a @ running
    if running is None:
        return a
    if cfg.combine == "sum":
        return a + running
    # paper: (I + A)(I + R) = I + A + R + A R
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return eye + a + running + a @ running


def attention_flow(
    layers: list[torch.Tensor],
    allowed: torch.Tensor,
    cfg: FlowConfig = DEFAULT_FLOW,
    image_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[N, N]` flow through layers 0..L-1 given as probabilities `[H, N, N]` (one sequence)."""
    if not layers:
        raise InputMismatchError("attention_flow: no layers given")
    rows = allowed.any(dim=-1)
    running = None
    for index, probs in enumerate(layers):
        if probs.shape[-2:] != allowed.shape:
            raise InputMismatchError(
                f"attention_flow: layer of shape {tuple(probs.shape)} vs mask {tuple(allowed.shape)}"
            )
        if not cfg.uses_layer(index):
            continue
        w = head_weights(probs, rows, cfg.head_weighting)
        a = prepare_layer(aggregate_heads(probs, w), allowed, cfg, image_tokens, len(layers))
        running = flow_step(running, a, cfg)
    if running is None:
        raise InputMismatchError(f"attention_flow: no layer of {len(layers)} inside the window of {cfg}")
    return running


def map_to_image(scores: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Image-token scores `[T]` (row-major patches) -> `[H, W]` map at the image's size, in [0, 1]."""
    gh, gw = grid
    if scores.numel() != gh * gw:
        raise InputMismatchError(f"map_to_image: {scores.numel()} image-token scores for a {gh}x{gw} grid")
    patches = scores.reshape(1, 1, gh, gw).float()
    up = F.interpolate(patches, size=size, mode="bilinear", align_corners=False)[0, 0]
    low, high = up.min(), up.max()
    return (up - low) / (high - low) if high > low else torch.zeros_like(up)


@dataclass
class FlowTaps(Taps):
    """A tap that folds each layer's attention into one running flow per `FlowConfig` (prefill only).

    Keeps one `[b, N, N]` matrix per flow instead of the attention of every layer; layers must
    arrive in order 0..L-1 (they do, in a forward pass). Several flows share one forward.
    """

    flows: tuple[FlowConfig, ...] = (DEFAULT_FLOW,)
    key_allowed: torch.Tensor | None = None  # [b, N, N] bool, set before the forward
    image_tokens: torch.Tensor | None = None  # [b, N] bool, set before the forward (image_only flows)
    num_layers: int | None = None  # L of the model (regularize_denominator="layers")
    running: list[torch.Tensor | None] = field(default_factory=list)
    layers_seen: list[int] = field(default_factory=list)

    def record_attention(self, layer: int, probs: torch.Tensor) -> None:
        if self.key_allowed is None:
            raise InputMismatchError("FlowTaps: key_allowed must be set before the forward")
        if not self.running:
            self.running = [None] * len(self.flows)
        probs = probs.detach().double()  # [b, H, N, N]
        allowed = self.key_allowed.to(probs.device)
        image = None if self.image_tokens is None else self.image_tokens.to(probs.device)
        maps: dict[str, list[torch.Tensor]] = {}  # head weighting -> per-sequence A_l
        for i, cfg in enumerate(self.flows):
            if not cfg.uses_layer(layer):
                continue
            if cfg.head_weighting not in maps:
                maps[cfg.head_weighting] = [
                    aggregate_heads(probs[b], head_weights(probs[b], allowed[b].any(dim=-1), cfg.head_weighting))
                    for b in range(probs.shape[0])
                ]
            steps = []
            for b, layer_map in enumerate(maps[cfg.head_weighting]):
                prev = None if self.running[i] is None else self.running[i][b]
                a = prepare_layer(layer_map, allowed[b], cfg, None if image is None else image[b], self.num_layers)
                steps.append(flow_step(prev, a, cfg))
            self.running[i] = torch.stack(steps)
        self.layers_seen.append(layer)
