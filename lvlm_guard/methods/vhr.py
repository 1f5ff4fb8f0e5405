"""VHR: Vision-aware Head Reinforcement (He et al., ACL 2025, "Cracking the Code of Hallucination in
LVLMs with Vision-aware Head Divergence", arXiv 2412.13949; official code jinghan1he/VHR, which is
not reachable from here: the details below are pinned from the paper's description and marked
where we had to choose).

1. Vision-aware Head Divergence (VHD) of head `h` in layer `l`: how far the head's output for the
   generating token moves when the image is removed from the context:
   `VHD = || o_{l,h}(image + text) - o_{l,h}(text only) ||_2` (head outputs before `o_proj`).
2. Layer by layer (the paper's adaptive rule): within layer `l`, heads whose VHD is an abnormal
   surge (above the layer's mean + std) are dropped; of the rest, heads above the median are the
   vision-aware heads; their outputs are multiplied by `alpha` (2, the paper's setting); then layer
   `l + 1` is processed, so its VHD already sees the reinforced state.

Choices (ours, stated): VHD is measured once per prompt, at the prompt's last token (the row that
generates the first answer token), and the selected heads stay reinforced for the whole answer. The
image-free branch is then a single text-only forward of the prompt (~50 tokens against ~620 with the
image) run before the prefill, not a second decoding stream, which keeps its cost within a few percent
of the prefill and nothing per decoding step; it is not itself reinforced. The distance is Euclidean.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from lvlm_guard.edits import HeadOutputEdit, HeadOutputs, InterventionPlan
from lvlm_guard.errors import InterventionConfigError
from lvlm_guard.layer_tensors import LayerTensors
from lvlm_guard.methods.base import Intervention, layer_range, register_method
from lvlm_guard.models.base import ModelSpec

NO_IMAGE = "vhr.image_free_heads"  # scratch[NO_IMAGE][layer]: [b, h, d] head outputs without the image
#: scratch[SCALE][layer]: [b, 1, h, 1] multiplier (alpha on vision-aware heads, else 1), in a LayerTensors
SCALE = "vhr.head_scale"
VHD = "vhr.divergence"  # scratch[VHD][layer]: [b, h] the measured divergences (diagnostics)


def vision_aware_heads(divergence: torch.Tensor) -> torch.Tensor:
    """`[b, h]` bool: above the layer's median once abnormal surges (> mean + std) are dropped."""
    surge = divergence > divergence.mean(-1, keepdim=True) + divergence.std(-1, keepdim=True)
    kept = divergence.masked_fill(surge, float("nan"))
    median = kept.nanquantile(0.5, dim=-1, keepdim=True)
    return (kept > median) & ~surge


def _reinforce(config: VHR, layers: tuple[int, ...], ctx: HeadOutputs, heads: torch.Tensor) -> torch.Tensor:
    """Head outputs `[b, q, h, d]` of one layer: measure VHD at the prompt's last row, scale.

    The scales are kept shaped `[b, 1, h, 1]`: a decoding step (eager decoding is bound by host
    time) then costs one lookup and one multiplication per layer."""
    state = ctx.state
    scales = state.scratch.get(SCALE)
    q_len = heads.shape[1]
    if q_len == 1:  # a decoding step: this prompt's scales
        scale = None if scales is None else scales.get(ctx.layer)
        return heads if scale is None else heads * scale
    if scales is None:
        scales = state.scratch[SCALE] = LayerTensors(layers)
    last_prompt_row = state.prompt_len - 1 - state.query_offset
    if 0 <= last_prompt_row < q_len:  # the prefill (or a recomputation) of this prompt
        image_free = state.scratch.get(NO_IMAGE, {}).get(ctx.layer)
        if image_free is None:
            return heads
        divergence = (heads[:, last_prompt_row].float() - image_free.float()).norm(dim=-1)  # [b, h]
        state.scratch.setdefault(VHD, {})[ctx.layer] = divergence
        selected = vision_aware_heads(divergence)
        scales[ctx.layer] = torch.where(selected, config.alpha, 1.0).to(heads.dtype)[:, None, :, None]
    scale = scales.get(ctx.layer)
    if scale is None:
        return heads
    rows = torch.arange(q_len, device=heads.device) >= last_prompt_row  # the generating rows
    return heads * torch.where(rows[None, :, None, None], scale, torch.ones_like(scale))


@register_method
@dataclass(frozen=True)
class VHR(Intervention):
    name = "vhr"

    alpha: float = 2.0  # the paper's reinforcement factor for LLaVA-1.5 (Sec. 5; alpha = 2)
    start_layer: int = 0  # the paper reinforces layer by layer through the decoder (ours: all layers)
    end_layer: int | None = None  # exclusive; None = every layer

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise InterventionConfigError(f"vhr: alpha must be > 0, got {self.alpha}")

    def layers(self, spec: ModelSpec) -> tuple[int, ...]:
        return layer_range("vhr", self.start_layer, self.end_layer, spec)

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        edit = HeadOutputEdit(fn=partial(_reinforce, self, self.layers(spec)))
        return InterventionPlan(head_outputs={layer: [edit] for layer in self.layers(spec)})

    def on_prefill(self, guard, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """The image-free branch: the prompt without its image tokens, last-token head outputs."""
        state, layers = guard.state, self.layers(guard.adapter.spec)
        state.scratch[SCALE] = LayerTensors(layers)  # no stale scales if this prompt records none
        state.scratch[NO_IMAGE] = record_image_free_heads(guard, input_ids, attention_mask, layers)


@torch.no_grad()
def record_image_free_heads(guard, input_ids, attention_mask, layers) -> dict[int, torch.Tensor]:
    """Run the language model on the prompt with its image tokens removed (left-padded again) and
    return each layer's per-head outputs `[b, h, d]` at the last token."""
    adapter, spec = guard.adapter, guard.adapter.spec
    keep = ~adapter.image_token_mask(input_ids) & _real_tokens(attention_mask, input_ids.shape[1])
    ids, mask = _left_packed(input_ids, keep)
    recorded: dict[int, torch.Tensor] = {}

    def recorder(layer):
        def hook(module, args):
            x = args[0][:, -1]
            recorded[layer] = x.view(x.shape[0], spec.num_heads, spec.head_dim).clone()

        return hook

    handles = [adapter.o_proj(layer).register_forward_pre_hook(recorder(layer)) for layer in layers]
    try:
        with guard.suspended():
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            adapter.language_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def _left_packed(input_ids: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept tokens of every row moved to the right end (left padding: every prompt ends in the
    last column), and their mask. One host sync (the width), not one per row."""
    lengths = keep.sum(1)
    width = int(lengths.max())
    column = (width - lengths)[:, None] + keep.cumsum(1) - 1  # target column of each kept token
    column = torch.where(keep, column, width)  # dropped tokens go to a spare column
    ids = input_ids.new_zeros(input_ids.shape[0], width + 1).scatter_(1, column, input_ids)
    mask = input_ids.new_zeros(input_ids.shape[0], width + 1).scatter_(1, column, keep.to(input_ids.dtype))
    return ids[:, :width], mask[:, :width]


def _real_tokens(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | bool:
    """`[b, length]` bool of non-padding prompt tokens from whatever mask `generate` passed: 2-D
    (possibly as wide as a static cache) or 4-D (the last row's allowed keys)."""
    if attention_mask is None:
        return True
    if attention_mask.dim() == 4:
        row = attention_mask[:, 0, -1, :length]
        return row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
    return attention_mask[:, :length].bool()
