"""Attention-sink tokens: tokens whose hidden states show massive activation in a few dimensions.

VAR (Kang et al., ICLR 2025, Sec. 3; official code MICV-yonsei/VisAttnSink) finds them per layer
from the layer's input hidden state: RMS-normalise it (no learned weight), read `|h|` at the model's
sink dimensions, and call a token a sink where the largest of those values exceeds `tau` (20).
The sink dimensions belong to the base LLM: the official code lists them for LLaMA-2 (below); for
any other model we find them from the BOS token, whose hidden state carries the massive values.
"""

from __future__ import annotations

import torch
from torch import nn

#: official constants (src/logic/constants.py): (model_type, hidden_size, layers) -> sink dims
KNOWN_SINK_DIMS: dict[tuple[str, int, int], tuple[int, ...]] = {
    ("llama", 4096, 32): (2533, 1415),  # LLaMA-2-7B / Vicuna-7B v1.5 (LLaVA-1.5-7B)
    ("llama", 5120, 40): (2100, 4743),  # LLaMA-2-13B (LLaVA-1.5-13B)
}

_DISCOVERED: dict[tuple, tuple[int, ...]] = {}  # per model (config identity), found once per process


def rms_normalized(hidden: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`h / rms(h)` over the last dimension, in float32 (the official code uses no learned weight)."""
    hidden = hidden.float()
    return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)


def sink_scores(hidden: torch.Tensor, dims: tuple[int, ...], eps: float = 1e-6) -> torch.Tensor:
    """`[b, q]`: the largest `|RMSNorm(h)|` over the sink dimensions, per token.

    Equal to `rms_normalized(hidden)[..., dims].abs().amax(-1)` without its float32 copy of the
    whole state (VAR runs this in ~30 layers of every prefill), and the dimensions are read by
    basic indexing: an index tensor built from `dims` is a host-to-device copy, which waits for
    the GPU to catch up in every layer."""
    mean_square = torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float32).square() / hidden.shape[-1]
    peak = torch.stack([hidden[..., d] for d in dims], dim=-1).abs().amax(-1).float()
    return peak * torch.rsqrt(mean_square + eps)


def massive_dims(hidden_per_layer: list[torch.Tensor], count: int) -> tuple[int, ...]:
    """The `count` dimensions with the largest mean `|RMSNorm(h)|` over the given `[D]` states."""
    magnitude = torch.stack([rms_normalized(h).abs() for h in hidden_per_layer]).mean(0)
    return tuple(int(i) for i in magnitude.topk(count).indices.sort().values)


@torch.no_grad()
def sink_dims_for(
    language_model: nn.Module, text_config, first_token_id: int, layers: range, count: int = 2
) -> tuple[int, ...]:
    """The model's sink dimensions: known ones, else found from one token's pass (cached).

    `first_token_id` should be the BOS token (or, for a tokenizer without one, the first token of
    a prompt): the token that becomes the text sink. `layers` are those whose input is read.
    """
    identity = (text_config.model_type, text_config.hidden_size, text_config.num_hidden_layers)
    if identity in KNOWN_SINK_DIMS:
        return KNOWN_SINK_DIMS[identity]
    key = (*identity, getattr(text_config, "_name_or_path", ""), first_token_id, count)
    if key not in _DISCOVERED:
        device = next(language_model.parameters()).device
        ids = torch.tensor([[first_token_id]], device=device)
        states = language_model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        _DISCOVERED[key] = massive_dims([states[layer][0, 0] for layer in layers], count)
    return _DISCOVERED[key]
