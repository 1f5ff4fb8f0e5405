"""The repetition penalty DoLa decodes with, blind to left padding.

transformers' `RepetitionPenaltyLogitsProcessor` (what the official code passes `repetition_penalty`
to: gsm8k_eval.py:307) penalises every token id in `input_ids`, the padding of a left-padded batch
included, so a padded prompt is decoded differently from the same prompt alone. This one penalises
the tokens that occur anywhere but at the padding token id, with the same rule (a score s becomes
s * penalty where s < 0, s / penalty otherwise; CTRL, Keskar et al. 2019). At batch 1 without
padding it equals transformers' processor.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class RepetitionPenalty(LogitsProcessor):
    def __init__(self, penalty: float, pad_token_id: int | None) -> None:
        self.penalty = penalty
        self.pad_token_id = pad_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        seen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)  # [b, V]
        real = (
            input_ids != self.pad_token_id
            if self.pad_token_id is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        seen.scatter_reduce_(1, input_ids, real, reduce="amax")
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)
