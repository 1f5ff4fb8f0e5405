"""Image-free contrastive refinement of next-token scores (PAI Sec. 3.3, in the style of CFG).

A second, image-free copy of the prompt is decoded alongside the real one with its own cache;
the final log-probabilities push away from what the language prior alone would say:
`final = gamma * (logp_img - logp_noimg) + logp_noimg`, restricted to tokens whose image-
conditioned probability is at least `plausibility` times the best one's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from lvlm_guard.engine.cache_compat import cache_kwargs, output_cache
from lvlm_guard.errors import InputMismatchError


def contrast_log_probs(
    logp_image: torch.Tensor, logp_no_image: torch.Tensor, gamma: float, plausibility: float
) -> torch.Tensor:
    """The refined scores `[b, vocab]` from two log-probability tensors (pure function)."""
    mixed = gamma * (logp_image - logp_no_image) + logp_no_image
    cutoff = math.log(plausibility) + logp_image.max(dim=-1, keepdim=True).values
    return mixed.masked_fill(logp_image < cutoff, float("-inf"))


class ImageFreeContrast(LogitsProcessor):
    """Runs the image-free branch step by step and mixes its scores into the real ones.

    `suspend` is a context manager that switches the guard's edits off while the image-free
    branch runs (PAI leaves that branch's attention untouched).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        no_image_inputs: dict[str, torch.Tensor],
        gamma: float,
        plausibility: float,
        suspend: Callable[[], AbstractContextManager],
    ) -> None:
        self.model = model
        self.input_ids = no_image_inputs["input_ids"]
        self.attention_mask = no_image_inputs["attention_mask"]
        self.gamma = gamma
        self.plausibility = plausibility
        self.suspend = suspend
        self.cache = None

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != self.input_ids.shape[0]:
            raise InputMismatchError(
                f"image-free contrast was prepared for batch {self.input_ids.shape[0]} but decoding runs"
                f" {input_ids.shape[0]} sequences (beam search / several return sequences are not supported)"
            )
        if self.cache is None:
            step_ids, mask = self.input_ids, self.attention_mask
        else:
            step_ids = input_ids[:, -1:]
            mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(step_ids.shape)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
        with self.suspend():
            out = self.model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                **cache_kwargs(self.model, self.cache),
                use_cache=True,
            )
        self.cache, self.attention_mask = output_cache(out), mask
        logp_no_image = F.log_softmax(out.logits[:, -1].float(), dim=-1)
        logp_image = F.log_softmax(scores.float(), dim=-1)
        return contrast_log_probs(logp_image, logp_no_image, self.gamma, self.plausibility).to(scores.dtype)
