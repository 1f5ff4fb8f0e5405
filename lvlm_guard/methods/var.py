"""VAR: Visual Attention Redistribution (Kang et al., ICLR 2025, "See What You Are Told: Visual
Attention Sink in Large Multimodal Models"; official code MICV-yonsei/VisAttnSink, `src/logic/logic.py`).

Per layer from `start_layer` to the second-to-last (the official code leaves the last layer alone):
1. Sink tokens: prompt tokens whose RMS-normalised input hidden state exceeds `tau` in the model's
   sink dimensions (`lvlm_guard.sinks`); text sinks (e.g. BOS) and visual sinks (inside the image).
2. Image-centric rows ("HeadFork"), per sequence, head and query row, from the current attention:
   image mass `I` = attention on image tokens, visual-sink mass `Vs`; selected where
   `Vs / I <= rho` and `I >= summ`. At prefill only rows after the image are eligible, while
   decoding every step's row (the `after_image` row selector gives exactly that).
3. In selected rows, every sink token's weight (text and visual) is multiplied by `p`, and the freed
   budget `(1 - p) * S` (S = sink mass) goes to the non-sink image tokens in proportion to their
   weights. Row sums stay 1.

Exact fused form (ours): step 3 multiplies each weight by a factor that depends only on the key's
group (sink: `p`; non-sink image: `1 + (1 - p) S / N`, N = their mass; other: 1) and keeps the sum,
so the new weights are `softmax(logits + log factor)`: an additive bias through fused SDPA, computed
from the selected rows' own probabilities. No full attention matrix outside the edited rows.

Choices where the official code is silent or batch-1 only (ours, stated): sink tokens are found
among the prompt's tokens at prefill; generated tokens are never sinks (their past hidden states
are not kept, and this keeps static-cache decoding shape-stable). For a model without known sink
dimensions they are the two largest `|RMSNorm(h)|` dimensions of the BOS token's hidden states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from lvlm_guard.decode_kernel import REDISTRIBUTE, DecodeKernel
from lvlm_guard.edits import AttentionEdit, AttentionRows, HiddenStateEdit, InterventionPlan
from lvlm_guard.errors import InterventionConfigError
from lvlm_guard.layer_tensors import LayerTensors
from lvlm_guard.methods.base import Intervention, layer_range, register_method
from lvlm_guard.models.base import ModelSpec
from lvlm_guard.sinks import sink_dims_for, sink_scores
from lvlm_guard.state import GuardState

SINKS = "var.sink_tokens"  # state.scratch[SINKS][layer]: [b, prompt_len] bool (a LayerTensors)
DIMS = "var.sink_dims"  # state.scratch[DIMS]: the model's sink dimensions


def redistribution_log_factors(
    probs: torch.Tensor, image: torch.Tensor, sinks: torch.Tensor, p: float, rho: float, summ: float
) -> torch.Tensor:
    """`[b, h, r, k]` log multipliers of VAR's redistribution (0 where a row is not selected).

    probs `[b, h, r, k]` (current attention, rows sum to 1); image, sinks `[b, k]` bool. The three
    group masses come from one matmul against the groups' indicator columns (few kernels per layer).
    """
    non_sink_image = image & ~sinks
    groups = torch.stack([image, image & sinks, sinks, non_sink_image], dim=-1).to(probs.dtype)  # [b, k, 4]
    masses = torch.matmul(probs, groups[:, None])  # [b, h, r, 4]: image I, visual sinks Vs, sinks S, N
    # N summed directly, not I - Vs: that difference cancels in float32 when visual sinks dominate
    image_mass, visual_sink_mass, sink_mass, free_mass = masses.unbind(-1)
    selected = (visual_sink_mass <= rho * image_mass) & (image_mass >= summ) & (free_mass > 0)
    gain = torch.log1p((1 - p) * sink_mass / free_mass.clamp_min(torch.finfo(probs.dtype).tiny))
    factors = math.log(p) * groups[:, None, None, :, 2] + gain[..., None] * groups[:, None, None, :, 3]
    return torch.where(selected[..., None], factors, torch.zeros_like(factors))


def _layer_sinks(state: GuardState, layer: int) -> torch.Tensor | None:
    """`[b, prompt_len]` sink tokens entering `layer` (None before any prompt was read)."""
    return state.scratch.get(SINKS, {}).get(layer)


def _redistribution_bias(config: VAR, rows: AttentionRows) -> torch.Tensor:
    k = rows.key.shape[2]
    sinks = _layer_sinks(rows.state, rows.layer)
    if sinks is None:
        sinks = torch.zeros(rows.image_keys.shape, dtype=torch.bool, device=rows.image_keys.device)
    sinks = F.pad(sinks, (0, k - sinks.shape[1])) if sinks.shape[1] < k else sinks[:, :k]
    logits = rows.dot_products().float() * rows.scaling  # no float32 copy of the key cache
    if rows.key_allowed is not None:
        logits = logits.masked_fill(~rows.key_allowed, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    return redistribution_log_factors(probs, rows.image_keys, sinks, config.p, config.rho, config.summ)


def _record_sinks(
    config: VAR, layers: tuple[int, ...], layer: int, _after: int, state: GuardState, hidden: torch.Tensor
) -> torch.Tensor:
    """After decoder layer `layer - 1`: find the sinks among the prompt tokens entering `layer`."""
    dims = state.scratch.get(DIMS)
    if dims is not None and hidden.shape[1] > 1 and state.query_offset == 0:
        found = sink_scores(hidden[:, : state.prompt_len], dims) > config.tau
        sinks = state.scratch.get(SINKS)
        if not isinstance(sinks, LayerTensors):
            sinks = state.scratch[SINKS] = LayerTensors(layers)
        sinks[layer] = found
    return hidden


@register_method
@dataclass(frozen=True)
class VAR(Intervention):
    name = "var"

    p: float = 0.6  # A_exps/lv1.5_7b.yml (p: 0.6): the share of attention sinks keep
    tau: float = 20.0  # constants.py: sink threshold on |RMSNorm(h)| at the sink dims
    rho: float = 0.5  # lv1.5_7b.yml: max visual-sink share of a row's image attention
    summ: float = 0.2  # lv1.5_7b.yml: min image attention of a row
    start_layer: int = 2  # logic.py: layers 0 and 1 are excluded
    end_layer: int | None = None  # exclusive; None = the last layer (excluded by the official code)
    sink_dims: tuple[int, ...] | None = None  # None: known per base LLM, else found from the BOS token

    def __post_init__(self) -> None:
        if not 0 < self.p <= 1:
            raise InterventionConfigError(f"var: p must be in (0, 1], got {self.p}")
        if not 0 <= self.rho <= 1 or not 0 <= self.summ <= 1:
            raise InterventionConfigError(f"var: rho and summ must be in [0, 1], got {self.rho}, {self.summ}")
        if self.start_layer < 1:
            raise InterventionConfigError("var: start_layer must be >= 1 (sinks are read from a layer's input)")

    def layers(self, spec: ModelSpec) -> tuple[int, ...]:
        return layer_range("var", self.start_layer, self.end_layer, spec, default_end=spec.num_layers - 1)

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        if self.sink_dims is not None and any(not 0 <= d < spec.hidden_size for d in self.sink_dims):
            raise InterventionConfigError(f"var: sink_dims {self.sink_dims} outside 0..{spec.hidden_size - 1}")
        plan = InterventionPlan()
        layers = self.layers(spec)
        for layer in layers:
            kernel = DecodeKernel(REDISTRIBUTE, p=self.p, rho=self.rho, summ=self.summ, sinks=_layer_sinks)
            edit = AttentionEdit(
                rows="after_image", logit_bias=partial(_redistribution_bias, self), decode_kernel=kernel
            )
            plan.attention[layer] = [edit]
            record = partial(_record_sinks, self, layers, layer)
            plan.hidden_states[layer - 1] = [HiddenStateEdit(record, prefill_only=True)]
        return plan

    def on_attach(self, guard) -> None:
        dims = self.sink_dims
        if dims is None:
            adapter = guard.adapter
            text_config = adapter.text_config
            first = text_config.bos_token_id
            if first is None and guard.processor is not None:
                first = guard.processor.tokenizer("a", add_special_tokens=True).input_ids[0]
            if first is None:
                raise InterventionConfigError("var: the model has no BOS token; give sink_dims explicitly")
            layers = self.layers(adapter.spec)
            dims = sink_dims_for(adapter.language_model, text_config, int(first), range(layers[0], layers[-1] + 1))
        guard.state.scratch[DIMS] = tuple(dims)
