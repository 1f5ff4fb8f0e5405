"""VAR: Visual Attention Redistribution (Kang et al., ICLR 2025, "See What You Are Told: Visual
Attention Sink in Large Multimodal Models"; official code MICV-yonsei/VisAttnSink: `src/logic/logic.py`,
`src/logic/constants.py`, `src/model/llava.py`, `A_exps/lv1.5_7b.yml`).

Per layer from `start_layer` (2: logic.py:52 `range(...)[2:]`) to the second-to-last (see `last_layer`):
1. Sink tokens (DimProspector, logic.py:98-110; llava.py:313-316, prefill only): prompt tokens whose
   input hidden state, RMS-normalised without weight (eps 1e-6), has `max_d |h_d| > tau` over the
   model's sink dimensions (constants.py:8-11; `lvlm_guard.methods.var.sinks`). Visual sinks are the sinks
   inside the image, text sinks (e.g. BOS) the others.
2. A layer without any visual sink is left alone: HeadFork selects no row there
   (logic.py:123-125 keeps only sinks inside the image span; `if len(vis_sink_inds) > 0` ... `else:
   forked_head[layer] = []`, logic.py:140-141), and `attn_redist` edits nothing without selected rows
   (logic.py:175), so neither its text sinks nor anything else move. Batched here: per sequence.
3. Image-centric rows (HeadFork, logic.py:127-138), per sequence, head and query row of the current
   (post-softmax) attention: image mass `I`, visual-sink mass `Vs`; selected where
   `Vs / I <= rho` and `I >= summ`. At prefill only rows after the image, while decoding every row
   (logic.py:179; the `after_image` row selector gives exactly that).
4. In selected rows (logic.py:186-211): text and visual sinks x `p`; the freed
   `(1 - p) * (Vs + Ts)` goes to the image tokens in proportion to their weights with the visual
   sinks zeroed (the non-sink image tokens). Row sums stay 1.

Last layer (`last_layer`): `A_exps/lv1.5_7b.yml:18` sets `except_last_layer: 1` and
`src/inference.py:74` passes it to `LogicEngine.activate` (logic.py:46 sets it on `LogicEngine`),
but `VARProcessor` shadows it with its own class attribute `except_last_layer = False`
(logic.py:148), which is what `attn_redist` reads (logic.py:169): the stored code edits the last
layer too. Default False, the yml's intent; `last_layer=True` is what the stored code runs. An
explicit `end_layer` overrides both.

Exact fused form (ours): step 4 multiplies each weight by a factor that depends only on the key's
group (sink: `p`; non-sink image: `1 + (1 - p) S / N`, N = their mass; other: 1) and keeps the sum,
so the new weights are `softmax(logits + log factor)`: an additive bias through fused SDPA, computed
from the selected rows' own probabilities. No full attention matrix outside the edited rows. A
sequence without visual sinks gets a bias of exactly 0 (and the fused decoding kernel sees no sinks
for it): its weights are the plain softmax's; through SDPA with that zero bias they equal the stock
call's up to rounding, as every edited layer's untouched rows do.

Remaining deviations, with reasons:
- Portion test: official `Vs / sum(image_attn + 1e-6)` (logic.py:129) adds 1e-6 per image token to
  the denominator; ours tests `Vs <= rho * I`. With `I >= summ` = 0.2 and 576 image tokens the
  official term moves the threshold by under 0.3% (relative); dropping it keeps the rule one
  comparison of masses in the fused kernel.
- A row whose image tokens are all sinks (N = 0) is not selected: the official ratio
  (logic.py:207) divides by zero there.
- Sinks are found among the prompt's tokens at prefill, per sequence (the official code is batch 1);
  generated tokens are never sinks (their past hidden states are not kept, and this keeps
  static-cache decoding shape-stable). For a model without known sink dimensions they are the two
  largest `|RMSNorm(h)|` dimensions of the BOS token's hidden states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F

from lvlm_guard.engine.edits import AttentionEdit, AttentionRows, HiddenStateEdit, InterventionPlan
from lvlm_guard.engine.kernels.decode_kernel import REDISTRIBUTE, DecodeKernel
from lvlm_guard.engine.layer_tensors import LayerTensors
from lvlm_guard.engine.state import GuardState
from lvlm_guard.errors import InterventionConfigError
from lvlm_guard.methods.base import Intervention, layer_range, register_method
from lvlm_guard.methods.settings import LAYER, POSITIVE, UNIT, Range
from lvlm_guard.methods.var.sinks import sink_dims_for, sink_scores
from lvlm_guard.models.base import ModelSpec


@dataclass
class VARState:
    """What VAR keeps per guard (`state.slot(VARState)`)."""

    sink_dims: tuple[int, ...] | None = None  # the model's sink dimensions, found at attach
    sinks: LayerTensors | dict | None = None  # [layer] -> [b, prompt_len] bool sink tokens of this prompt


def redistribution_log_factors(
    probs: torch.Tensor, image: torch.Tensor, sinks: torch.Tensor, p: float, rho: float, summ: float
) -> torch.Tensor:
    """`[b, h, r, k]` log multipliers of VAR's redistribution (0 where a row is not selected, and in
    every row of a sequence without visual sinks: logic.py:125,140-141).

    probs `[b, h, r, k]` (current attention, rows sum to 1); image, sinks `[b, k]` bool. The three
    group masses come from one matmul against the groups' indicator columns (few kernels per layer).
    """
    non_sink_image = image & ~sinks
    groups = torch.stack([image, image & sinks, sinks, non_sink_image], dim=-1).to(probs.dtype)  # [b, k, 4]
    masses = torch.matmul(probs, groups[:, None])  # [b, h, r, 4]: image I, visual sinks Vs, sinks S, N
    # N summed directly, not I - Vs: that difference cancels in float32 when visual sinks dominate
    image_mass, visual_sink_mass, sink_mass, free_mass = masses.unbind(-1)
    has_visual_sinks = groups[:, :, 1].amax(-1) > 0  # [b]
    selected = (visual_sink_mass <= rho * image_mass) & (image_mass >= summ) & (free_mass > 0)
    selected = selected & has_visual_sinks[:, None, None]
    gain = torch.log1p((1 - p) * sink_mass / free_mass.clamp_min(torch.finfo(probs.dtype).tiny))
    factors = math.log(p) * groups[:, None, None, :, 2] + gain[..., None] * groups[:, None, None, :, 3]
    return torch.where(selected[..., None], factors, torch.zeros_like(factors))


def _layer_sinks(state: GuardState, layer: int) -> torch.Tensor | None:
    """`[b, prompt_len]` sink tokens entering `layer` (None before any prompt was read)."""
    sinks = state.slot(VARState).sinks
    return None if sinks is None else sinks.get(layer)


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
    """After decoder layer `layer - 1`: find the sinks among the prompt tokens entering `layer`.

    A sequence without a visual sink in this layer keeps none at all (logic.py:125,140-141: the
    layer is left alone), so the fused decoding kernel, which reads these, leaves it alone too."""
    var_state = state.slot(VARState)
    dims = var_state.sink_dims
    if dims is not None and hidden.shape[1] > 1 and state.query_offset == 0:
        found = sink_scores(hidden[:, : state.prompt_len], dims) > config.tau
        if state.image_keys is not None:
            image = state.image_keys[:, : found.shape[1]]
            found = found & (found[:, : image.shape[1]] & image).any(-1, keepdim=True)
        sinks = var_state.sinks
        if not isinstance(sinks, LayerTensors):
            sinks = var_state.sinks = LayerTensors(layers)
        sinks[layer] = found
    return hidden


@register_method
@dataclass(frozen=True)
class VAR(Intervention):
    name = "var"
    bounds: ClassVar = {"p": Range(0, 1, low_open=True), "tau": POSITIVE, "rho": UNIT, "summ": UNIT,
                        "start_layer": Range(1), "end_layer": LAYER, "sink_dims": Range(0)}  # fmt: skip

    p: float = 0.6  # A_exps/lv1.5_7b.yml (p: 0.6): the share of attention sinks keep
    tau: float = 20.0  # constants.py: sink threshold on |RMSNorm(h)| at the sink dims
    rho: float = 0.5  # lv1.5_7b.yml: max visual-sink share of a row's image attention
    summ: float = 0.2  # lv1.5_7b.yml: min image attention of a row
    start_layer: int = 2  # logic.py:52: layers 0 and 1 are excluded
    end_layer: int | None = None  # exclusive; None = up to the last layer, which `last_layer` decides
    last_layer: bool = False  # lv1.5_7b.yml:18 except_last_layer: 1; True = the stored code (logic.py:148)
    sink_dims: tuple[int, ...] | None = None  # None: known per base LLM, else found from the BOS token

    def __post_init__(self) -> None:
        if not 0 < self.p <= 1:
            raise InterventionConfigError(f"var: p must be in (0, 1], got {self.p}")
        if not 0 <= self.rho <= 1 or not 0 <= self.summ <= 1:
            raise InterventionConfigError(f"var: rho and summ must be in [0, 1], got {self.rho}, {self.summ}")
        if self.start_layer < 1:
            raise InterventionConfigError("var: start_layer must be >= 1 (sinks are read from a layer's input)")

    def layers(self, spec: ModelSpec) -> tuple[int, ...]:
        default_end = spec.num_layers if self.last_layer else spec.num_layers - 1
        return layer_range("var", self.start_layer, self.end_layer, spec, default_end=default_end)

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
        guard.state.slot(VARState).sink_dims = tuple(dims)
