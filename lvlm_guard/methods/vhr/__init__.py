"""VHR: Vision-aware Head Reinforcement (He et al., ACL 2025, "Cracking the Code of Hallucination in
LVLMs with Vision-aware Head Divergence", arXiv 2412.13949). The official code (jinghan1he/VHR) is
not reachable from here; everything below follows the paper's text (Sec. 3.1-3.2, Eq. 4-7,
Algorithm 1, Sec. 4.4, App. C-D), and each choice the paper leaves open is named.

1. Vision-aware Head Divergence, Eq. 4: `VHD_{l,i} = || A_{l,i}(x_V, x_T) - A_{l,i}(x_T) ||_2`, head
   `i`'s output in layer `l` (softmax(QK^T/sqrt d)V, before `o_proj`) for the generating token,
   with and without the image.
2. Outliers, Eq. 6: `VHD_{l,i}` is set to 0 only if BOTH `VHD_{l,i} > mean + std` of layer `l` AND
   `TA_{l,i} = ||A_{l,i}(x_T)||^2 > mean + std` of layer `l` (a surge of the head's image-free
   output: "negative vision sensitivity"). `vision_aware_heads`.
3. Selection, Eq. 7: `H_l = {i : VHD_{l,i} > median(VHD_{l,*})}`, the median over all heads of the
   layer, zeroed ones included (half the heads); their outputs are multiplied by `alpha` (2, Sec.
   4.4). Layer by layer within one forward: layer `l`'s VHD already sees layers `< l` reinforced.
4. When (Algorithm 1, Sec. 3.2 "Determine the heads at the first generation step"): heads are
   chosen at t = 0, from the prompt's last token, and kept for every later step; one image-free
   forward at t = 0 only (Sec. 4.7).
5. Layers (Sec. 4.4, App. C, Fig. 5): LLaVA series: the second layer (index 1) and the last 14 of
   32; InstructBLIP: the last 18 of 32. For any depth L: `early_layers` plus the last
   `round(last_share * L)` layers (presets `paper_llava`, chosen for the llava and llava_next
   families and as the default for the others, and `paper_instructblip`, by name only: no
   InstructBLIP adapter exists here); `explicit_layers` overrides the rule.

Open points, as config fields or stated:
- Which prompt rows are scaled at t = 0 (`prompt_rows`): the paper does not say. Default "all":
  Algorithm 1 reinforces `H_l` in the t = 0 forward with no row restriction, and Sec. 3.2 argues
  for keeping the K/V of all tokens consistent, which holds only if the prompt's cached K/V were
  made with the reinforced heads. "last" scales only the generating rows (the prompt's last token,
  then every generated one).
- Whether the image-free branch is reinforced: here it is not. It is one text-only forward of the
  prompt run before the prefill (a second decoding stream is not needed: heads are fixed at t = 0),
  so its outputs must exist before the image forward selects any head; reinforcing it would need
  both branches in one forward.
- std is torch's sample (unbiased) std; the paper writes sigma without saying which.
- The distance is Euclidean (Eq. 4), in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch

from lvlm_guard.engine.edits import HeadOutputEdit, HeadOutputs, InterventionPlan
from lvlm_guard.engine.layer_tensors import LayerTensors
from lvlm_guard.errors import InterventionConfigError
from lvlm_guard.methods.base import Intervention, Preset, check_layers, register_method
from lvlm_guard.methods.settings import LAYER, POSITIVE, UNIT, Choice
from lvlm_guard.models.base import ModelSpec


@dataclass
class VHRState:
    """What VHR keeps per guard and prompt (`state.slot(VHRState)`)."""

    image_free: dict = field(default_factory=dict)  # [layer] -> [b, h, d] head outputs without the image
    scales: LayerTensors | None = None  # [layer] -> [b, 1, h, 1]: alpha on vision-aware heads, else 1
    divergence: dict = field(default_factory=dict)  # [layer] -> [b, h] measured, before Eq. 6 (diagnostics)

PROMPT_ROWS = ("all", "last")


def _surges(values: torch.Tensor) -> torch.Tensor:
    """`[b, h]` bool: above the layer's mean + std (Eq. 6's test, over the head axis)."""
    return values > values.mean(-1, keepdim=True) + values.std(-1, keepdim=True)


def vision_aware_heads(divergence: torch.Tensor, text_energy: torch.Tensor) -> torch.Tensor:
    """`[b, h]` bool, the heads `H_l` of one layer (Eq. 6-7).

    divergence `[b, h]`: VHD; text_energy `[b, h]`: TA = ||image-free head output||^2. A head's VHD
    is zeroed where both surge; then the heads above the median over all heads are chosen."""
    scored = divergence.masked_fill(_surges(divergence) & _surges(text_energy), 0.0)
    median = scored.median(-1, keepdim=True).values  # the lower middle: same choice as the midpoint for ">"
    return scored > median


def reinforced_layers(num_layers: int, early_layers: tuple[int, ...], last_share: float) -> tuple[int, ...]:
    """Sec. 4.4's rule for any depth: `early_layers` plus the last `round(last_share * L)` layers
    (halves round up, so 14/32 of 32 is 14 and of 4 is 2)."""
    last = math.floor(last_share * num_layers + 0.5)
    return tuple(sorted(set(early_layers) | set(range(num_layers - last, num_layers))))


def _reinforce(config: VHR, layers: tuple[int, ...], ctx: HeadOutputs, heads: torch.Tensor) -> torch.Tensor:
    """Head outputs `[b, q, h, d]` of one layer: at t = 0 choose the heads from the prompt's last
    row (Eq. 4-7), then scale.

    The scales are kept shaped `[b, 1, h, 1]`: a decoding step (eager decoding is bound by host
    time) then costs one lookup and one multiplication per layer."""
    state = ctx.state
    vhr_state = state.slot(VHRState)
    scales = vhr_state.scales
    q_len = heads.shape[1]
    if q_len == 1:  # a decoding step: this prompt's scales
        scale = None if scales is None else scales.get(ctx.layer)
        return heads if scale is None else heads * scale
    if scales is None:
        scales = vhr_state.scales = LayerTensors(layers)
    last_prompt_row = state.prompt_len - 1 - state.query_offset
    if 0 <= last_prompt_row < q_len:  # the prefill (or a recomputation) of this prompt: t = 0
        image_free = vhr_state.image_free.get(ctx.layer)
        if image_free is None:
            return heads
        image_free = image_free.float()
        divergence = (heads[:, last_prompt_row].float() - image_free).norm(dim=-1)  # [b, h], Eq. 4
        vhr_state.divergence[ctx.layer] = divergence
        selected = vision_aware_heads(divergence, image_free.square().sum(-1))
        scales[ctx.layer] = torch.where(selected, config.alpha, 1.0).to(heads.dtype)[:, None, :, None]
    scale = scales.get(ctx.layer)
    if scale is None:
        return heads
    first = 0 if config.prompt_rows == "all" else last_prompt_row
    if first <= 0:
        return heads * scale
    rows = torch.arange(q_len, device=heads.device) >= first  # the generating rows
    return heads * torch.where(rows[None, :, None, None], scale, torch.ones_like(scale))


def _as_layers(value) -> tuple[int, ...] | None:
    """A layer list from a spec value: `1` and `(1,)` alike (`vhr:early_layers=1`)."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, int):
        return (value,)
    if value == "" or value == "()":
        return ()
    return tuple(value)


@register_method
@dataclass(frozen=True)
class VHR(Intervention):
    name = "vhr"
    presets: ClassVar = {
        "paper_llava": Preset({"early_layers": (1,), "last_share": 14 / 32}, "VHR paper Sec. 4.4, LLaVA series"),
        "paper_instructblip": Preset({"early_layers": (), "last_share": 18 / 32}, "VHR paper Sec. 4.4, InstructBLIP"),
    }
    family_presets: ClassVar = {"llava": "paper_llava", "llava_next": "paper_llava"}
    bounds: ClassVar = {"alpha": POSITIVE, "early_layers": LAYER, "last_share": UNIT, "explicit_layers": LAYER,
                        "prompt_rows": Choice(PROMPT_ROWS)}  # fmt: skip

    alpha: float = 2.0  # Sec. 4.4 (alpha = 2); App. D, Table 6: 3 also works, 4 breaks generation
    preset: str = "auto"  # "auto": the family picks (every family here: paper_llava)
    early_layers: tuple[int, ...] | None = None  # None: the preset's ((1,) LLaVA: App. C's "second layer")
    last_share: float | None = None  # None: the preset's (14/32 LLaVA, 18/32 InstructBLIP; Sec. 4.4)
    explicit_layers: tuple[int, ...] | None = None  # given: exactly these layers, instead of the rule
    prompt_rows: str = "all"  # prompt rows scaled at t = 0 (open in the paper; see the module docstring)

    def __post_init__(self) -> None:
        self.check_preset()
        object.__setattr__(self, "early_layers", _as_layers(self.early_layers))
        object.__setattr__(self, "explicit_layers", _as_layers(self.explicit_layers))
        if self.alpha <= 0:
            raise InterventionConfigError(f"vhr: alpha must be > 0, got {self.alpha}")
        if self.last_share is not None and not 0 <= self.last_share <= 1:
            raise InterventionConfigError(f"vhr: last_share must be in [0, 1], got {self.last_share}")
        if self.prompt_rows not in PROMPT_ROWS:
            raise InterventionConfigError(f"vhr: prompt_rows must be one of {PROMPT_ROWS}, got {self.prompt_rows!r}")

    def layers(self, spec: ModelSpec) -> tuple[int, ...]:
        if self.explicit_layers is not None:
            layers = tuple(sorted(set(self.explicit_layers)))
        else:
            filled = self.for_family(None)  # a guard passes a filled config; alone: the default preset
            check_layers("vhr", filled.early_layers, spec)
            layers = reinforced_layers(spec.num_layers, filled.early_layers, filled.last_share)
        if not layers:
            raise InterventionConfigError("vhr: no layer to reinforce")
        return check_layers("vhr", layers, spec)

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        edit = HeadOutputEdit(fn=partial(_reinforce, self, self.layers(spec)))
        return InterventionPlan(head_outputs={layer: [edit] for layer in self.layers(spec)})

    def on_prefill(self, guard, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """The image-free branch: the prompt without its image tokens, last-token head outputs."""
        state, layers = guard.state, self.layers(guard.adapter.spec)
        vhr_state = state.slot(VHRState)
        vhr_state.scales = LayerTensors(layers)  # no stale scales if this prompt records none
        vhr_state.image_free = record_image_free_heads(guard, input_ids, attention_mask, layers)


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
