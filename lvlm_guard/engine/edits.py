"""The stable interface between interventions and the model: what a method may change.

A method never touches modules. It returns a plan of edits (see `InterventionPlan`), each a small
dataclass holding pure functions of tensors; the guard finds the tensors and calls them.

Four intervention points (issue #2, scope 4):
  (a) `AttentionEdit`   - attention of chosen heads, for chosen query rows, over the keys the
                          function decides (pre-softmax additive bias and/or post-softmax reweight);
  (b) `HeadOutputEdit`  - per-head outputs just before `o_proj`;
  (c) `HiddenStateEdit` - hidden states between decoder layers;
  (d) taps              - read-only records of attention maps and hidden states (`lvlm_guard.engine.taps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, get_args

import torch

from lvlm_guard.engine.kernels.decode_kernel import DecodeKernel

if TYPE_CHECKING:
    from lvlm_guard.engine.state import GuardState

#: which query rows of each forward an attention edit applies to, in cache-invariant terms
#:  - "generating": rows that predict a new token: the prompt's last token and every generated one
#:    (with a KV cache: the last row at prefill, then every decoding step; in a full recomputation
#:    without cache: the same rows, so both give the same result)
#:  - "generated": rows of generated tokens only
#:  - "after_image": rows whose position lies after the sequence's last image token
#:  - "all": every row
RowSelector = Literal["generating", "generated", "after_image", "all"]


@dataclass
class AttentionRows:
    """What an attention edit sees: query rows `[row_start, q_len)` of the selected heads, one layer.

    Shapes: b = batch, h = the edit's heads, r = selected rows, k = key length, d = head dim.
    """

    layer: int
    query: torch.Tensor  # [b, h, r, d] (rotary applied, not scaled)
    key: torch.Tensor  # [b, h, k, d] (key heads already repeated to match query heads)
    scaling: float
    image_keys: torch.Tensor  # [b, k] bool: key is an image token
    key_allowed: torch.Tensor | None  # [b|1, 1, r, k] bool causal+padding mask; None: all keys
    row_start: int  # index of the first selected row among the forward's queries
    decoding: bool  # a one-token forward of a decoding step
    state: GuardState

    def select_heads(self, slots: torch.Tensor) -> AttentionRows:
        """The same rows for a subset of the heads (`slots` index this object's head axis)."""
        return replace(self, query=self.query.index_select(1, slots), key=self.key.index_select(1, slots))

    def dot_products(self) -> torch.Tensor:
        """Unscaled q.k in the inputs' dtype, `[b, h, r, k]` (what fused kernels also compute)."""
        return torch.matmul(self.query, self.key.transpose(-1, -2))

    def logits(self) -> torch.Tensor:
        """Scaled dot products in float32, `[b, h, r, k]` (the pre-softmax scores, unmasked)."""
        return torch.matmul(self.query.float(), self.key.float().transpose(-1, -2)) * self.scaling

    def image_key_weights(self, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
        """`[b, 1, 1, k]`: `scale` on image keys, 0 elsewhere (cached for the step's other layers)."""
        return self.state.image_key_weights(self.image_keys, dtype, scale)

    def row_positions(self) -> torch.Tensor:
        """`[b, r]` cache position of every selected row (the last key it may attend to)."""
        b, _, r, _ = self.query.shape
        k = self.key.shape[2]
        if self.key_allowed is None:
            return torch.full((b, r), k - 1, device=self.query.device)
        idx = torch.arange(k, device=self.query.device)
        return torch.where(self.key_allowed[:, 0], idx, -1).amax(-1).expand(b, r)


#: pre-softmax: returns an additive bias `[b, h, r, k]` (float32)
LogitBias = Callable[[AttentionRows], torch.Tensor]


@dataclass(frozen=True)
class ScoreMod:
    """An elementwise rewrite of the scaled pre-softmax scores: `score -> fn(score, weight[key])`.

    It describes the same edit as a `logit_bias` (`fn(s, w) - s`), in a form a fused kernel
    (FlexAttention's `score_mod`) can apply while it streams the keys, so the edit costs no second
    read of the key cache. `weights(state, image_keys[b, k])` gives one float32 weight per key,
    `[b, k]`; `fn` must be made of elementwise torch ops, since it runs both on full tensors and
    inside the kernel. `eager_bias` optionally computes the same bias in fewer kernels, for eager
    decoding, which is bound by kernel launches (tests check it against `fn`).
    """

    weights: Callable[[GuardState, torch.Tensor], torch.Tensor]
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    eager_bias: Callable[[AttentionRows], torch.Tensor] | None = None

    def bias(self, rows: AttentionRows) -> torch.Tensor:
        """The equivalent additive bias `[b, h, r, k]`, for the unfused path."""
        if self.eager_bias is not None and not torch.compiler.is_compiling():
            return self.eager_bias(rows)
        scores = rows.dot_products().float() * rows.scaling  # q.k in the inputs' dtype, as kernels do
        return self.fn(scores, self.weights(rows.state, rows.image_keys)[:, None, None, :]) - scores


#: post-softmax: maps probabilities `[b, h, r, k]` (float32, rows sum to 1) to new ones
Reweight = Callable[[AttentionRows, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttentionEdit:
    """Change the attention of `heads` (None: all) in one layer, on the rows `rows` selects.

    A bias keeps the fast fused SDPA path; a reweight needs explicit weights for the selected
    rows and heads only. A `score_mod` is a bias in elementwise form: where the layer's edits
    allow it (all heads, decoding, CUDA) it runs inside one fused kernel, elsewhere it acts as
    the bias it stands for. Several edits on one layer compose: biases add, reweights chain.
    """

    heads: tuple[int, ...] | None = None
    rows: RowSelector = "generating"
    logit_bias: LogitBias | None = None
    reweight: Reweight | None = None
    score_mod: ScoreMod | None = None
    #: the same edit in the declarative form the fused Triton decoding kernel runs (a layer whose
    #: only edit has one uses it while decoding on CUDA; `lvlm_guard.engine.kernels.decode_kernel`)
    decode_kernel: DecodeKernel | None = None

    def __post_init__(self) -> None:
        if self.logit_bias is None and self.reweight is None and self.score_mod is None:
            raise ValueError("an AttentionEdit needs a logit_bias, a score_mod or a reweight")
        if self.logit_bias is not None and self.score_mod is not None:
            raise ValueError("give an AttentionEdit a logit_bias or a score_mod, not both")
        if self.rows not in get_args(RowSelector):
            raise ValueError(f"rows must be one of {get_args(RowSelector)}, got {self.rows!r}")


@dataclass
class HeadOutputs:
    """What a head-output edit sees."""

    layer: int
    state: GuardState


@dataclass(frozen=True)
class HeadOutputEdit:
    """Change per-head attention outputs before `o_proj`.

    Applied by the guard's attention function to its own output (`[b, q, h, d]`, what `o_proj`
    receives after a reshape), not by a hook on `o_proj`: a module hook slows every eager call of
    the module and adds checks to every compiled decoding step.

    `fn(ctx, x)` gets `x: [b, q, h, d]` for the selected heads (all when None) and returns the
    same shape.
    """

    fn: Callable[[HeadOutputs, torch.Tensor], torch.Tensor]
    heads: tuple[int, ...] | None = None


@dataclass(frozen=True)
class HiddenStateEdit:
    """Change the hidden states a decoder layer outputs: `fn(layer, state, h[b, q, D]) -> h`.

    `prefill_only`: the edit reads or changes multi-token forwards only (VAR records its sink
    tokens there). Its hook is then absent from decoding steps, where a compiled step would
    otherwise trace it and check its Python state on every call."""

    fn: Callable[[int, GuardState, torch.Tensor], torch.Tensor]
    prefill_only: bool = False


@dataclass(frozen=True)
class TokenExit:
    """Image tokens leave the sequence after decoder layer `layer` (DyVTE).

    Unlike a `HiddenStateEdit` it changes the sequence length: later layers, their KV cache and
    the final norm/lm_head see the text tokens only. With `decide` (and `layer` None) the exit
    layer is found at prefill: `decide(layer, hidden[b, q, D], image_tokens[b, q], mask) -> bool`.
    `hooks(layer, adapter, state, decide)` builds the object whose `install(model)` returns the
    hook handles (the method's own mechanics: `lvlm_guard.methods.token_exit.hooks`).
    """

    layer: int | None
    decide: Callable[..., bool] | None = None
    hooks: Callable[..., object] | None = None


@dataclass
class InterventionPlan:
    """Everything one intervention asks for, by layer index."""

    attention: dict[int, list[AttentionEdit]] = field(default_factory=dict)
    head_outputs: dict[int, list[HeadOutputEdit]] = field(default_factory=dict)
    hidden_states: dict[int, list[HiddenStateEdit]] = field(default_factory=dict)
    token_exit: TokenExit | None = None

    def merge(self, other: InterventionPlan) -> InterventionPlan:
        """Union of two plans; edits on the same layer keep the order of the interventions."""
        merged = InterventionPlan()
        for name in ("attention", "head_outputs", "hidden_states"):
            target: dict = getattr(merged, name)
            for plan in (self, other):
                for layer, edits in getattr(plan, name).items():
                    target.setdefault(layer, []).extend(edits)
        exits = [p.token_exit for p in (self, other) if p.token_exit is not None]
        if len(exits) > 1:
            raise ValueError("only one token exit per guard")
        merged.token_exit = exits[0] if exits else None
        return merged
