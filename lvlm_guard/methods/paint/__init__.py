"""PAINT: Paying Attention to INformed Tokens (Arif, Dip, Hussain, Zhang, Thomas; arXiv 2501.12206,
v1 titled "Fixing Imbalanced Attention to Mitigate In-Context Hallucination of Large Vision-Language
Model"; official code hasanar1f/PAINT, folder modPAI/, read at commit 2a9e8f8).

A PAI variant (`lvlm_guard.methods.pai`) that boosts two sets of image tokens by different margins.

1. Informed tokens, chosen once per image from the CLIP vision tower's CLS attention
   (modPAI/llava/model/multimodal_encoder/clip_encoder.py, `update_modpai_alpha`, :37-59; the tower
   runs with `output_attentions=True`, :166, and the sets are made right after, :168):
   - a = the CLS row's post-softmax attention to the patches (the last 576 of 577 keys), summed over
     heads (:38-39);
   - local ("locally informative") = the top `int(576 * 0.25)` = 144 patches by `a` of ViT layer 0
     (`vit_attn[0]`, :38, :42; `local_token_ratio=0.25`, :37);
   - summary = the top `int(576 * r)` patches by `a` of the second-to-last ViT layer (`vit_attn[-2]`,
     :39, :48), r = the share of those values above Q3 + 1.5 IQR (`get_top_ratio`, :16-29, numpy's
     linear percentiles). For 576 patches `int(576 * c / 576) == c` for every count c, so the set is
     exactly the values above the fence (`iqr_outliers`);
   - local := local minus summary (:51-55).
   The "spatial" stream is off in the code: `spatial_token_ratio=0` (:31) and the call passes no
   ratio (:41), so it adds no token; chair_eval.py's `--spatial` and `--top_token_ratio` (:50, :56)
   are parsed but never reach `update_modpai_alpha`. It is not offered here.
2. The edit (modPAI/attention.py:132-147): after the causal mask (:109-117), pre-softmax, the last
   query row of every forward (`attn_weights[:, :, -1, tokens]`: the prompt's last token at prefill,
   each decoding step's row), all heads alike, `s + alpha * |s|` on local tokens and
   `s + beta * |s|` on summary tokens, at the token's image offset (:135-136); layers
   `range(start_layer, end_layer)` (:189) = 2..31 of LLaMA-7B (chair_eval.py:57-58). Not applied
   while `use_cfg` is set (:139), i.e. in the image-free branch of CFG.py.
3. Optional image-free contrast (PAI's CFG.py, opt-in `--use-cfg`, chair_eval.py:54; `gamma` here).

Defaults: alpha 0.7 (chair_eval.py:51, also the proof-of-concept constant of commit 2678af0);
beta by preset: "paper" 0.4 (the value the paper gives for its tables, as pinned in
../shared/notes/methods.md from the paper's text) is the default; "code" 0.3 (chair_eval.py:52, the
constant of commit 2678af0) by name: `paint:preset=code`. `gamma` None: the code's CFG is opt-in and
no command in the repo turns it on for PAINT.

Deviations from the official code, each with its reason:
- Batch-aware, per image: the official sets come from the first image of the batch only
  (`vit_attn[...][0, ...]`, clip_encoder.py:38-39) and its scripts run batch 1 (chair_eval.py:45,
  pope_eval.py); here every image gets its own sets and each sequence its own images' tokens.
  Several images in one prompt: each image's patches are ranked on their own (the official code has
  one image per prompt).
- CLS attention from a forward pre-hook on the tower's attention modules (q_proj / k_proj of the
  layer-normed input, softmax in float32) instead of `output_attentions=True`, which would switch the
  tower to eager attention and return every layer's map. Same formula; tested against the
  attentions of a float64 eager tower (tests/test_paint.py).
- Ties in the top-25% cut are broken by `torch.topk` (the official also uses `torch.topk`, :42).
- Families: only towers with a CLS token whose image tokens are one pass of patches (LLaVA-1.5).
  Qwen2-VL and Idefics3/SmolVLM have no CLS token and LLaVA-NeXT's anyres tokens are not mapped:
  attaching raises ClsAttentionUnavailableError naming the family and why.
- No fused decoding kernel: the Triton kernel (`lvlm_guard.engine.kernels.decode_kernel`) amplifies one scalar alpha
  over a boolean image mask, PAINT needs a per-key margin; PAINT runs as a `ScoreMod` (a
  FlexAttention score_mod under compile on CUDA, an SDPA additive bias elsewhere).
- The official pope_eval.py calls `llama_modify` without `beta` (pope_eval.py:113-122 against the
  9-parameter attention.py:184), so its POPE script cannot run as stored; nothing here depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from lvlm_guard.engine.edits import AttentionEdit, AttentionRows, InterventionPlan, ScoreMod
from lvlm_guard.engine.state import GuardState
from lvlm_guard.methods.base import Intervention, Preset, layer_range, register_method
from lvlm_guard.methods.pai import PAI, _amplified
from lvlm_guard.methods.settings import LAYER, NONNEGATIVE, POSITIVE, UNIT, Range
from lvlm_guard.models.base import ModelSpec

if TYPE_CHECKING:
    from lvlm_guard.engine.guard import Guard

@dataclass
class PaintState:
    """What PAINT keeps per guard (`state.slot(PaintState)`)."""

    tokens: InformedTokens | None = None  # the informed tokens of the images seen last


# --- the token rule (clip_encoder.py:16-59), pure functions -------------------------------------------
def cls_patch_attention(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """`[n, heads, patches]`: the CLS query's post-softmax attention (over every token, CLS included)
    at the patch keys. query `[n, heads, 1, d]` (the CLS token's), key `[n, heads, tokens, d]`."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale  # [n, h, 1, tokens]
    return scores.softmax(dim=-1)[:, :, 0, 1:]


def iqr_outliers(values: torch.Tensor, whisker: float = 1.5) -> torch.Tensor:
    """`[n, patches]` bool: values above Q3 + whisker * IQR of their row (linear-interpolated
    quartiles, as numpy's default percentile)."""
    quartiles = torch.quantile(
        values.double(), torch.tensor([0.25, 0.75], dtype=torch.float64, device=values.device), dim=-1, keepdim=True
    )
    q1, q3 = quartiles[0], quartiles[1]
    return values.double() > q3 + whisker * (q3 - q1)


def top_share(values: torch.Tensor, ratio: float) -> torch.Tensor:
    """`[n, patches]` bool: the top `int(patches * ratio)` patches of each row by value."""
    count = int(values.shape[-1] * ratio)
    chosen = torch.zeros_like(values, dtype=torch.bool)
    if count:
        chosen.scatter_(-1, values.topk(count, dim=-1).indices, True)
    return chosen


def informed_tokens(
    local_attention: torch.Tensor, summary_attention: torch.Tensor, local_ratio: float, whisker: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(local, summary), each `[n, patches]` bool, from the head-summed CLS attention of the local
    layer (ViT layer 0) and of the summary layer (the second-to-last): local = top share minus summary."""
    summary = iqr_outliers(summary_attention, whisker)
    local = top_share(local_attention, local_ratio) & ~summary
    return local, summary


def patch_margins(local: torch.Tensor, summary: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """`[n, patches]` float32: alpha at local patches, beta at summary patches, 0 elsewhere."""
    return local.float() * alpha + summary.float() * beta


# --- per-guard state --------------------------------------------------------------------------------
@dataclass
class InformedTokens:
    """The guard's PAINT state: the last tower pass's CLS attention and token sets, and the margin of
    every cache slot of the current prompt (0 at text and at uninformed image tokens).

    The tower may run before the language model's forward (transformers' `generate` encodes the
    images first) or inside it, so a pass only stores its patches' margins (`pending`); the next
    language-model forward places them at its image tokens, when the first edited layer asks."""

    adapter: object  # the model's ModelAdapter (patch -> image token placement)
    local_vit_layer: int
    summary_vit_layer: int
    local_ratio: float
    whisker: float
    alpha: float
    beta: float
    cls_attention: dict[int, torch.Tensor] = field(default_factory=dict)  # vit layer -> [n_images, patches]
    local: torch.Tensor | None = None  # [n_images, patches] bool
    summary: torch.Tensor | None = None  # [n_images, patches] bool
    pending: torch.Tensor | None = None  # [n_images, patches] margins of a pass not yet placed
    margins: torch.Tensor | None = None  # [b, k] float32, per cache slot
    _unrecorded: set = field(default_factory=set, repr=False)  # vit layers still to record in this pass
    _keys: torch.Tensor | None = field(default=None, repr=False)  # the image mask `_cache` was built for
    _cache: dict = field(default_factory=dict, repr=False)

    def record(self, vit_layer: int, attention: torch.Tensor) -> None:
        """Store one layer's `[n, patches]` CLS attention; the pass's sets once both layers are in."""
        if not self._unrecorded:
            self._unrecorded = {self.local_vit_layer, self.summary_vit_layer}
        self.cls_attention[vit_layer] = attention
        self._unrecorded.discard(vit_layer)
        if not self._unrecorded:
            self.local, self.summary = informed_tokens(
                self.cls_attention[self.local_vit_layer],
                self.cls_attention[self.summary_vit_layer],
                self.local_ratio,
                self.whisker,
            )
            self.pending = patch_margins(self.local, self.summary, self.alpha, self.beta)

    def place(self, state: GuardState) -> None:
        """The pending pass's margins at this forward's image tokens (cache slots from
        `state.query_offset` on; earlier slots keep theirs). A forward without image tokens drops
        them: the pass served no prompt (e.g. a tower run of its own)."""
        values, self.pending = self.pending, None
        image_keys, offset = state.image_keys, state.query_offset
        if image_keys is None or not image_keys[:, offset:].any():
            return
        new = self.adapter.patch_values_at_image_tokens(values, image_keys[:, offset:])
        earlier = self._fit(image_keys.shape[0], offset, new.device)
        self.margins = torch.cat([earlier, new], dim=1)
        self._keys, self._cache = None, {}

    def _fit(self, batch: int, k: int, device) -> torch.Tensor:
        """`[batch, k]` margins: the prompt's, cut or zero-padded to k slots (generated tokens are
        text); zeros where no image of this batch was recorded."""
        margins = self.margins
        if margins is None or margins.shape[0] != batch:
            return torch.zeros(batch, k, device=device)
        if margins.shape[1] < k:
            return F.pad(margins, (0, k - margins.shape[1]))
        return margins[:, :k]

    def weights(self, state: GuardState, image_keys: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
        """`[b, 1, 1, k]`: `scale` x the margin at every key (0 off the image); built once per
        decoding step (the step's image mask), shared by the layers. Masked by `image_keys`, so a
        prompt without images gets no edit from an earlier prompt's margins."""
        if self.pending is not None and not torch.compiler.is_compiling():
            self.place(state)
        if torch.compiler.is_compiling():  # no Python cache inside a graph
            base = self._fit(*image_keys.shape, image_keys.device) * image_keys
            return (base.to(dtype) * scale)[:, None, None, :]
        if image_keys is not self._keys:
            self._keys = image_keys
            self._cache = {"base": self._fit(*image_keys.shape, image_keys.device) * image_keys}
        key = (dtype, scale)
        if key not in self._cache:
            self._cache[key] = (self._cache["base"].to(dtype) * scale)[:, None, None, :]
        return self._cache[key]


def _tokens(state: GuardState) -> InformedTokens | None:
    return state.slot(PaintState).tokens


def _margins(state: GuardState, image_keys: torch.Tensor) -> torch.Tensor:
    """ScoreMod weights `[b, k]` float32: the margin of every key."""
    tokens = _tokens(state)
    if tokens is None:  # no guard recorded any image (a plan used on its own)
        return torch.zeros(image_keys.shape, device=image_keys.device)
    return tokens.weights(state, image_keys, torch.float32, 1.0)[:, 0, 0]


def _margin_bias(rows: AttentionRows) -> torch.Tensor:
    """`_amplified(s, w) - s` = `w * |s|` from unscaled q.k in three kernels (as PAI's eager bias)."""
    dots = rows.dot_products()
    tokens = _tokens(rows.state)
    if tokens is None:
        return dots.zero_()
    return dots.abs_().mul_(tokens.weights(rows.state, rows.image_keys, dots.dtype, rows.scaling))


@register_method
@dataclass(frozen=True)
class PAINT(Intervention):
    name = "paint"
    presets: ClassVar = {
        "paper": Preset({"beta": 0.4}, "PAINT paper (arXiv 2501.12206), the summary-token margin of its tables"),
        "code": Preset({"beta": 0.3}, "hasanar1f/PAINT modPAI/chair_eval.py:52 --beta 0.3"),
    }
    family_presets: ClassVar = {}  # one model (LLaVA-1.5) in the paper: "paper" serves every family
    bounds: ClassVar = {"alpha": NONNEGATIVE, "beta": NONNEGATIVE, "local_ratio": UNIT, "whisker": NONNEGATIVE,
                        "start_layer": LAYER, "end_layer": LAYER, "gamma": POSITIVE,
                        "plausibility": Range(0, 1, low_open=True)}  # fmt: skip

    preset: str = "auto"  # "auto" = "paper" (beta 0.4); "code" = the repo's 0.3
    alpha: float = 0.7  # margin of local tokens: chair_eval.py:51 --alpha 0.7 (paper and code agree)
    beta: float | None = None  # margin of summary tokens; None: the preset's (paper 0.4, code 0.3)
    local_ratio: float = 0.25  # share of patches ranked local: clip_encoder.py:37 local_token_ratio=0.25
    local_vit_layer: int = 0  # ViT layer of the local ranking: clip_encoder.py:38 vit_attn[0]
    summary_vit_layer: int = -2  # ViT layer of the summary outliers: clip_encoder.py:39 vit_attn[-2]
    whisker: float = 1.5  # summary fence Q3 + whisker * IQR: clip_encoder.py:24
    start_layer: int = 2  # chair_eval.py:57 --start-layer 2 (attention.py:189 range(start, end))
    end_layer: int | None = None  # exclusive; chair_eval.py:58 --end-layer 32 = every layer of LLaMA-7B
    gamma: float | None = None  # CFG off: chair_eval.py:54 --use-cfg is opt-in (gamma 2 there, :55)
    plausibility: float = 0.1  # PAI's CFG.py: tokens below 0.1 x the best conditional probability dropped

    def __post_init__(self) -> None:  # types and `bounds` are checked before (methods/settings.py)
        self.check_preset()

    def layers(self, spec: ModelSpec) -> tuple[int, ...]:
        return layer_range("paint", self.start_layer, self.end_layer, spec)

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        config = self.for_family(None)  # a guard passes a filled config; alone: the default preset
        layers = config.layers(spec)
        if config.alpha == 0 and config.beta == 0:
            return InterventionPlan()
        margin = ScoreMod(weights=_margins, fn=_amplified, eager_bias=_margin_bias)
        edit = AttentionEdit(rows="generating", score_mod=margin)
        return InterventionPlan(attention={layer: [edit] for layer in layers})

    def on_attach(self, guard: Guard) -> None:
        """Hooks on the tower's two attention modules (one hook where both layers are one module)."""
        config = self.for_family(guard.adapter.family)
        vit_layers = (config.local_vit_layer, config.summary_vit_layer)
        modules = guard.adapter.cls_attention_modules(vit_layers)
        tokens = InformedTokens(
            guard.adapter, config.local_vit_layer, config.summary_vit_layer, config.local_ratio,
            config.whisker, config.alpha, config.beta,
        )  # fmt: skip
        guard.state.slot(PaintState).tokens = tokens
        served: dict[int, tuple[torch.nn.Module, list[int]]] = {}
        for layer, module in zip(vit_layers, modules):
            served.setdefault(id(module), (module, []))[1].append(layer)
        for module, layers in served.values():
            hook = partial(_record_cls_attention, guard.state, tokens, tuple(layers))
            guard.own_hook(module.register_forward_pre_hook(hook, with_kwargs=True))

    #: PAI's image-free contrast (CFG.py), on the same fields (gamma, plausibility)
    logits_processor = PAI.logits_processor


@torch.no_grad()
def _record_cls_attention(state: GuardState, tokens: InformedTokens, vit_layers, module, args, kwargs):
    """Forward pre-hook of a tower attention module: its input is the layer-normed hidden state."""
    if state.suspended:
        return None
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    query, key, scale = tokens.adapter.cls_query_key(module, hidden)
    attention = cls_patch_attention(query, key, scale).sum(dim=1)  # [n_images, patches]
    for layer in vit_layers:
        tokens.record(layer, attention)
    return None


__all__ = [
    "PAINT",
    "InformedTokens",
    "cls_patch_attention",
    "informed_tokens",
    "iqr_outliers",
    "patch_margins",
    "top_share",
]
