"""DoLa's layer contrast as pure functions (Chuang et al., ICLR 2024, Sec. 2.2-2.3, Eq. 2-4).

Pinned from the official code voidism/DoLa, `transformers-4.28.1/src/transformers/generation/utils.py`
(`dola_greedy_decode`) and transformers' own port, now the hub repo transformers-community/dola
(`custom_generate/generate.py`, which transformers 5 points `dola_layers` to:
generation/utils.py:151 of 5.25):
- premature layer = the candidate whose next-token distribution is farthest from the final one,
  by the code's Jensen-Shannon divergence: with M = (softmax(final) + softmax(premature)) / 2,
  `0.5 * (kl_div(log_softmax(final), M) + kl_div(log_softmax(premature), M))`, each `.mean(-1)`
  over the vocabulary (utils.py:2678-2691; `F.kl_div(input, target)` is sum target * (log target - input));
- the adaptive plausibility constraint on the final layer: log-probabilities below
  max + log(relative_top) become -inf (`relative_top_filter`, utils.py:2456-2465, relative_top 0.1);
- the contrast: log_softmax(final) (filtered) - log_softmax(premature), the premature side set to
  -1e3 where the final one was cut (utils.py:2698-2705), so cut tokens stay -inf.
The official code picks one premature layer for the whole batch (`js_divs.mean(-1)`, :2694; it runs
batch 1); here each sequence (and position) picks its own, which is the same at batch 1 and keeps a
batch equal to its prompts one by one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FILTERED_BASE = -1e3  # utils.py:2704: the premature log-probability where the final one is cut


def jensen_shannon(final_logits: torch.Tensor, premature_logits: torch.Tensor) -> torch.Tensor:
    """`[C, ...]` the code's JSD between `final_logits [..., V]` and each of `premature_logits [C, ..., V]`."""
    final = final_logits.float()[None]
    premature = premature_logits.float()
    mean = 0.5 * (F.softmax(final, dim=-1) + F.softmax(premature, dim=-1))
    kl1 = F.kl_div(F.log_softmax(final, dim=-1), mean, reduction="none").mean(-1)
    kl2 = F.kl_div(F.log_softmax(premature, dim=-1), mean, reduction="none").mean(-1)
    return 0.5 * (kl1 + kl2)


def dola_contrast(
    final_logits: torch.Tensor, premature_logits: torch.Tensor, relative_top: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DoLa scores `[..., V]` (float32) and the chosen candidate index `[...]` per row.

    `final_logits [..., V]`: the mature (last) layer; `premature_logits [C, ..., V]`: early exits of
    the candidate layers, in candidate order.
    """
    chosen = jensen_shannon(final_logits, premature_logits).argmax(0)  # [...]
    index = chosen[None, ..., None].expand(1, *premature_logits.shape[1:])
    base = premature_logits.float().gather(0, index)[0].log_softmax(-1)
    final = final_logits.float().log_softmax(-1)
    cut = final < final.max(dim=-1, keepdim=True).values + math.log(relative_top)
    final = final.masked_fill(cut, float("-inf"))
    base = base.masked_fill(cut, FILTERED_BASE)
    return final - base, chosen


def candidate_layers(choice: str, num_layers: int, tied_embeddings: bool) -> tuple[int, ...]:
    """`low` / `high` candidate premature layers (hidden-state indices: 0 = the embeddings), as
    transformers' DoLa (custom_generate/generate.py of transformers-community/dola): for N <= 40
    layers, `range(start, N // 2, 2)` and `range(N // 2, N, 2)`; deeper models `range(start, 20, 2)`
    and `range(N - 20, N, 2)`. `start` skips the embeddings when the output head is tied to them
    (an early exit there is the identity): 2, or 1 for a 2-layer model."""
    if not tied_embeddings:
        start = 0
    else:
        start = 2 if num_layers > 2 else 1 if num_layers == 2 else 0
    if choice == "low":
        if start == num_layers // 2:
            return (start,)
        return tuple(range(start, num_layers // 2, 2) if num_layers <= 40 else range(start, 20, 2))
    return tuple(range(num_layers // 2, num_layers, 2) if num_layers <= 40 else range(num_layers - 20, num_layers, 2))
