"""VCD's contrast of the two branches' next-token logits (a pure function).

Official code DAMO-NLP-SG/VCD `vcd_utils/vcd_sample.py`:
- cutoff = log(beta) + max(logits) (:150, "version 2" of the adaptive plausibility constraint,
  computed on the original branch's raw logits: the same cut as probs >= beta * max(probs), :146-147);
- diffs = (1 + alpha) * logits - alpha * logits_noised (:152);
- tokens below the cutoff get -inf (:153); generation's logits processors and warpers run after
  (:156-157), and the token is sampled from the softmax (:160-161). Under greedy decoding the
  token is the argmax of the same contrasted logits.
"""

from __future__ import annotations

import math

import torch


def contrast_logits(logits: torch.Tensor, logits_noised: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """`[..., vocab]` contrasted logits in float32: `(1 + alpha) * l - alpha * l_noised` where
    `l >= log(beta) + max(l)`, `-inf` elsewhere (vcd_sample.py:150-153)."""
    logits, logits_noised = logits.float(), logits_noised.float()
    cutoff = math.log(beta) + logits.max(dim=-1, keepdim=True).values
    diffs = (1 + alpha) * logits - alpha * logits_noised
    return diffs.masked_fill(logits < cutoff, float("-inf"))
