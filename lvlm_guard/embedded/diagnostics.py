"""Diagnostics of a model's attention and hidden states: the phenomena hallucination methods act on.

Pure functions of tensors recorded by taps (`lvlm_guard.engine.taps`), so each is testable by hand:

- how much attention the generating rows give to image keys (PAI's premise: LLaVA-style models
  under-attend the image; Liu et al., ECCV 2024);
- attention sinks carried by massive activations (Sun et al., 2024, *Massive Activations in LLMs*)
  and VAR's sink-token test (Kang et al., ICLR 2025, *See What You Are Told: Visual Attention Sink
  in Large Multimodal Models*; official code MICV-yonsei/VisAttnSink): RMS-normalise the layer's
  input hidden state without the norm's weight, read |value| at the model's sink dimensions, and
  call a token a sink if that exceeds tau = 20;
- the spread of heads by image attention, which head-selecting methods (VHR, the imbalanced
  attention fix) depend on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from lvlm_guard.errors import InputMismatchError

#: VAR's sink threshold on RMS-normalised |value| (VisAttnSink src/logic/constants.py, tau = 20)
VAR_TAU = 20.0
#: hidden size of the LLM VAR's tau was set on (LLaMA-2-7B in LLaVA-1.5-7B)
VAR_REFERENCE_HIDDEN = 4096
#: "massive": |value| this many times the median |value| of the layer. Sun et al. (2024) ask for
#: about 1000x (and |value| > 100) on 7B models; 20x is the lower bar of our diagnostics brief
MASSIVE_RATIO = 20.0


def _check_keys(probs: torch.Tensor, keys: torch.Tensor) -> None:
    if probs.dim() != 4:
        raise InputMismatchError(
            f"attention probabilities must be [batch, heads, q, k]; got shape {tuple(probs.shape)}"
        )
    if keys.shape != (probs.shape[0], probs.shape[-1]):
        raise InputMismatchError(
            f"key mask of shape {tuple(keys.shape)} does not match attention of shape {tuple(probs.shape)}; "
            f"expected [batch, k] = [{probs.shape[0]}, {probs.shape[-1]}]"
        )


def pad_keys(keys: torch.Tensor, k_len: int) -> torch.Tensor:
    """A `[b, prompt_len]` key mask extended with False to `k_len` keys (generated tokens are text)."""
    if k_len < keys.shape[1]:
        raise InputMismatchError(f"cannot shorten a key mask of {keys.shape[1]} keys to {k_len}")
    return torch.nn.functional.pad(keys, (0, k_len - keys.shape[1]), value=False)


def attention_mass(probs: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Attention mass each (batch, head, query row) puts on a set of keys.

    probs: post-softmax `[b, heads, q, k]`; keys: bool `[b, k]`. Returns `[b, heads, q]`. With the
    image-token mask this is the image-attention share; with a sink mask, the attention sinks draw.
    """
    _check_keys(probs, keys)
    return (probs * keys[:, None, None, :].to(probs.dtype)).sum(-1)


def key_fraction(keys: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of the visible keys that are in `keys`, per sequence: `[b]`.

    The reference for `attention_mass`: uniform attention over the visible keys puts exactly this
    share on them. `visible` (bool `[b, k]`, e.g. the attention mask) defaults to all keys.
    """
    visible = torch.ones_like(keys, dtype=torch.bool) if visible is None else visible.bool()
    if visible.shape != keys.shape:
        raise InputMismatchError(f"visible mask {tuple(visible.shape)} does not match key mask {tuple(keys.shape)}")
    return (keys.bool() & visible).sum(-1).double() / visible.sum(-1).clamp(min=1).double()


def rms_normalise(hidden: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`hidden / rms(hidden)` over the last dim, without the norm's learned weight (VAR's sink test)."""
    hidden = hidden.float()
    return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)


def rms_normalised_bound(hidden_size: int) -> float:
    """Largest |value| an RMS-normalised vector can have: sqrt(D), all its mass in one dimension.

    With D = 4096 (LLaMA-2-7B) that is 64, so tau = 20 asks for about a tenth of the vector's
    energy in one dimension; with D = 384 it is 19.6 and tau = 20 can never be met.
    """
    return math.sqrt(hidden_size)


def scaled_tau(hidden_size: int, tau: float = VAR_TAU, reference_hidden: int = VAR_REFERENCE_HIDDEN) -> float:
    """tau moved to another hidden size so that it asks for the same share of the vector's energy.

    A token with energy share s in one dimension has RMS-normalised value sqrt(s * D) there, so the
    same s gives tau * sqrt(D / D_ref). Our own transfer rule; VAR only publishes tau for 7B/13B.
    """
    return tau * math.sqrt(hidden_size / reference_hidden)


def massive_entries(hidden: torch.Tensor, ratio: float = MASSIVE_RATIO) -> torch.Tensor:
    """Bool mask of entries whose |value| exceeds `ratio` times the median |value| of the whole tensor.

    hidden: `[..., q, D]`, one layer's hidden states; the median is taken over all of it.
    """
    magnitude = hidden.float().abs()
    return magnitude > ratio * magnitude.median()


def massive_dims(hidden: torch.Tensor, tokens: torch.Tensor, ratio: float = MASSIVE_RATIO) -> list[int]:
    """Hidden dimensions where any of the chosen tokens has a massive entry (see `massive_entries`).

    hidden: `[q, D]` (one sequence, one layer); tokens: bool `[q]`. The median is over all of `hidden`.
    """
    if hidden.dim() != 2 or tokens.shape != hidden.shape[:1]:
        raise InputMismatchError(
            f"massive_dims takes hidden [q, D] and tokens [q]; got {tuple(hidden.shape)}, {tuple(tokens.shape)}"
        )
    found = massive_entries(hidden, ratio)[tokens.bool()].any(0)
    return found.nonzero().flatten().tolist()


def sink_tokens(hidden: torch.Tensor, sink_dims: Sequence[int], tau: float = VAR_TAU) -> torch.Tensor:
    """VAR's sink test: bool `[..., q]`, True where max over `sink_dims` of |RMS-normalised value| > tau.

    hidden: `[..., q, D]`, the input hidden state of one decoder layer (VisAttnSink src/logic/logic.py,
    as pinned in our methods notes). No sink dims: no sinks.
    """
    if len(sink_dims) == 0:
        return torch.zeros(hidden.shape[:-1], dtype=torch.bool, device=hidden.device)
    dims = torch.as_tensor(list(sink_dims), device=hidden.device)
    if int(dims.max()) >= hidden.shape[-1] or int(dims.min()) < 0:
        raise InputMismatchError(f"sink dims {list(sink_dims)} outside hidden size {hidden.shape[-1]}")
    return rms_normalise(hidden).index_select(-1, dims).abs().amax(-1) > tau


def frequent_dims(counts: Mapping[int, int], total: int, min_fraction: float = 0.5) -> list[int]:
    """Dimensions counted in at least `min_fraction` of `total` observations, most frequent first."""
    kept = [(dim, n) for dim, n in counts.items() if total and n / total >= min_fraction]
    return [dim for dim, _ in sorted(kept, key=lambda item: (-item[1], item[0]))]


def top_share(weights: torch.Tensor, k: int) -> float:
    """Share of the total of `weights` (1-D) held by its k largest entries; 0 for an empty total."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    return float(weights.topk(min(k, weights.numel())).values.sum()) / total


def image_centric_heads(share: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    """(layer, head) pairs whose image-attention share is above `threshold`; share: `[layers, heads]`."""
    if share.dim() != 2:
        raise InputMismatchError(f"head shares must be [layers, heads]; got shape {tuple(share.shape)}")
    return [(int(layer), int(head)) for layer, head in (share > threshold).nonzero().tolist()]


def top_decile_threshold(values: Iterable[float] | torch.Tensor) -> float:
    """The 90th percentile (linear interpolation), the cut for 'top decile' of heads."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    return float(torch.quantile(values, 0.9))
