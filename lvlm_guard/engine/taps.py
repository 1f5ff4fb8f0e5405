"""Read-only taps: attention maps and hidden states recorded during guarded forwards.

Used for diagnostics (attention share on image tokens, sink tokens) and by VL-SAM. Taps never
change what the model computes: attention maps are recomputed beside the fused kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Taps:
    """What to record and what was recorded.

    `attention[layer]` is a list, one entry per forward call (prefill, then each decoding step),
    of post-edit attention probabilities `[b, heads, q, k]` (float32, on CPU).
    `hidden_states[layer]` follows transformers' convention: index l is the input of decoder
    layer l (0 = embeddings), index num_layers the output of the last layer (before the final
    norm); one `[b, q, D]` tensor per forward call.
    """

    attention_layers: frozenset[int] = frozenset()
    hidden_layers: frozenset[int] = frozenset()
    prefill_only: bool = False
    attention: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    hidden_states: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def wants_attention(self, layer: int, q_len: int) -> bool:
        return layer in self.attention_layers and not (self.prefill_only and q_len == 1)

    def wants_hidden(self, layer: int, q_len: int) -> bool:
        return layer in self.hidden_layers and not (self.prefill_only and q_len == 1)

    def record_attention(self, layer: int, probs: torch.Tensor) -> None:
        self.attention.setdefault(layer, []).append(probs.detach().float().cpu())

    def record_hidden(self, layer: int, hidden: torch.Tensor) -> None:
        self.hidden_states.setdefault(layer, []).append(hidden.detach().float().cpu())
