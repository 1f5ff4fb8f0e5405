"""VL-SAM attention maps: head weighting and regularized attention flow (pure tensor functions).

Pinned from the paper (Lin et al., NeurIPS 2024, Sec. 3.2, "attention map generation"); the
official code is not public, so the choices the text leaves open are parameters of `FlowConfig`.

- Per layer l, the causal attention probabilities S_l `[H, N, N]` of the whole sequence.
- Head weighting: a head that attends sharply somewhere matters more, so each head gets
  w_h = mean over query rows of (max over keys of S_l[h]); the layer's map is
  A_l = mean_h(w_h * S_l[h]).
- Regularized attention flow: A_l propagated through the layers like attention rollout,
  R_l = A_l @ R_{l-1}. Under a causal mask the early columns are seen by every row and soak up
  the flow; the paper regularizes each column j by (1 - n_j / N), n_j the number of rows that
  may attend to it (N - j under a causal mask), applied to every A_l before propagation.
- The object word's rows of R_L, restricted to the image tokens, are the map.

Memory: `FlowTaps` folds each layer into the running product as the layer is computed, so only
two `[N, N]` matrices are kept, never the attention of all layers and heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lvlm_guard.errors import InputMismatchError, InterventionConfigError
from lvlm_guard.taps import Taps


@dataclass(frozen=True)
class FlowConfig:
    """How attention of all layers becomes one map.

    head_weighting: "max-mean" (paper: mean over rows of the max over keys) or "uniform".
    regularize: column regularization (1 - n_j / N) of the paper; off gives plain rollout.
    residual: weight of the identity mixed into each layer, (1 - r) A + r I (Abnar & Zuidema's
        rollout uses 0.5; the paper writes the flow without it, so 0).
    renormalize: re-normalize rows after regularization so the flow stays a mixing of rows
        (our choice; the paper is silent; it keeps magnitudes comparable across layers).
    propagate: False sums the layers' maps instead of multiplying them (an ablation, not the
        paper: per-layer attention of the word, no flow).
    """

    head_weighting: str = "max-mean"
    regularize: bool = True
    residual: float = 0.0
    renormalize: bool = True
    propagate: bool = True

    def __post_init__(self) -> None:
        if self.head_weighting not in ("max-mean", "uniform"):
            raise InterventionConfigError(f"FlowConfig: unknown head_weighting {self.head_weighting!r}")
        if not 0.0 <= self.residual <= 1.0:
            raise InterventionConfigError(f"FlowConfig: residual must be in [0, 1], got {self.residual}")


DEFAULT_FLOW = FlowConfig()


def head_weights(probs: torch.Tensor, allowed: torch.Tensor | None = None, how: str = "max-mean") -> torch.Tensor:
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


def regularize_columns(layer_map: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Scale column j by (1 - n_j / N), n_j = how many rows may attend to key j.

    `allowed` `[N, N]` bool is the attention mask (row i may see key j).
    """
    n = allowed.shape[0]
    seen_by = allowed.to(layer_map.dtype).sum(dim=0)  # [N]
    return layer_map * (1.0 - seen_by / n)[None, :]


def flow_step(
    running: torch.Tensor | None, layer_map: torch.Tensor, allowed: torch.Tensor, cfg: FlowConfig
) -> torch.Tensor:
    """One layer of the flow: R_l = A'_l @ R_{l-1} (R_{-1} = identity)."""
    a = layer_map
    if cfg.regularize:
        a = regularize_columns(a, allowed)
    if cfg.renormalize:
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    if cfg.residual:
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        a = (1.0 - cfg.residual) * a + cfg.residual * eye
    if running is None:
        return a
    return a @ running if cfg.propagate else a + running


def attention_flow(layers: list[torch.Tensor], allowed: torch.Tensor, cfg: FlowConfig = DEFAULT_FLOW) -> torch.Tensor:
    """`[N, N]` flow through all layers from per-layer probabilities `[H, N, N]` (one sequence)."""
    if not layers:
        raise InputMismatchError("attention_flow: no layers given")
    rows = allowed.any(dim=-1)
    running = None
    for probs in layers:
        if probs.shape[-2:] != allowed.shape:
            raise InputMismatchError(
                f"attention_flow: layer of shape {tuple(probs.shape)} vs mask {tuple(allowed.shape)}"
            )
        w = head_weights(probs, rows, cfg.head_weighting)
        running = flow_step(running, aggregate_heads(probs, w), allowed, cfg)
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
    """A tap that folds each layer's attention into the flow as it is computed (prefill only).

    Keeps one running `[b, N, N]` product instead of the attention of every layer; the layers
    must arrive in order 0..L-1 (they do, in a forward pass).
    """

    flow: FlowConfig = DEFAULT_FLOW
    key_allowed: torch.Tensor | None = None  # [b, N, N] bool, set before the forward
    running: torch.Tensor | None = field(default=None)
    layers_seen: list[int] = field(default_factory=list)

    def record_attention(self, layer: int, probs: torch.Tensor) -> None:
        if self.key_allowed is None:
            raise InputMismatchError("FlowTaps: key_allowed must be set before the forward")
        probs = probs.detach().double()
        allowed = self.key_allowed.to(probs.device)
        steps = []
        for b in range(probs.shape[0]):
            rows = allowed[b].any(dim=-1)
            w = head_weights(probs[b], rows, self.flow.head_weighting)
            prev = None if self.running is None else self.running[b].to(probs.device)
            steps.append(flow_step(prev, aggregate_heads(probs[b], w), allowed[b], self.flow))
        self.running = torch.stack(steps)
        self.layers_seen.append(layer)
