"""Attention edits injected through transformers' attention-function registry.

The guard switches the language model's `_attn_implementation` to one of the names registered
here. The registered function wraps the stock SDPA (or the family's eager) function: on layers
without edits, or while the guard is disabled, it calls the stock function with the same
arguments, so logits are bit-identical. On edited layers it runs the stock function and then
recomputes only the selected query rows of the selected heads with the edit applied, through
SDPA with an additive bias where the edit is a bias, with explicit weights where it reweights.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from lvlm_guard.engine import attention_math as am
from lvlm_guard.engine.edits import AttentionEdit, AttentionRows, HeadOutputEdit, HeadOutputs
from lvlm_guard.engine.kernels import decode_kernel as dk
from lvlm_guard.engine.state import GuardState

GUARDED = {"sdpa": "lvlm_guard_sdpa", "eager": "lvlm_guard_eager"}
BASE_OF = {v: k for k, v in GUARDED.items()}
LAYER_ATTR = "_lvlm_guard_attention"  # set on attention modules while a guard is attached


def register_guarded_attention() -> None:
    """Register our attention functions and their mask builders (idempotent).

    The mask builder must be registered under the same name, or transformers builds a mask in a
    different format for an unknown name and logits stop being bit-identical.
    """
    AttentionInterface.register(GUARDED["sdpa"], guarded_attention_forward)
    AttentionInterface.register(GUARDED["eager"], guarded_attention_forward)
    AttentionMaskInterface.register(GUARDED["sdpa"], sdpa_mask)
    AttentionMaskInterface.register(GUARDED["eager"], eager_mask)


def stock_attention_function(module: torch.nn.Module) -> Callable:
    """The function the model would call without the guard."""
    base = BASE_OF.get(module.config._attn_implementation, "sdpa")
    if base == "sdpa":
        return sdpa_attention_forward
    return sys.modules[type(module).__module__].eager_attention_forward


def guarded_attention_forward(module, query, key, value, attention_mask, **kwargs):
    layer_attention: LayerAttention | None = getattr(module, LAYER_ATTR, None)
    if layer_attention is None:
        return stock_attention_function(module)(module, query, key, value, attention_mask, **kwargs)
    stock = layer_attention.stock_for(module)
    if layer_attention.passthrough and layer_attention.state.taps is None:  # a layer without edits
        return stock(module, query, key, value, attention_mask, **kwargs)
    return layer_attention(module, query, key, value, attention_mask, stock, **kwargs)


@dataclass(frozen=True)
class FastPaths:
    """Which fast form of an attention edit serves, chosen once when a guard is attached
    (`lg.attach(..., paths=FastPaths(...))`); every form equals the readable reference path (the
    SDPA additive bias / patched rows) up to rounding, as tests/test_decode_kernel.py checks.

    decode_kernel: the fused Triton decoding kernel (`lvlm_guard.engine.kernels.decode_kernel`) for a layer whose one
      all-head edit has a kernel form. "auto" = on CUDA where Triton is installed; "on" = wherever it
      can run (the tests: CPU through Triton's interpreter); "off" = never. On by default: on the H200
      it lifted eager VAR decoding from 0.58x to 1.00x plain at batch 1 and from 0.55x to 0.87x at
      batch 8 (paired), and per layer and step it takes 7.4 us (PAI) / 11.5 us (VAR) against SDPA's
      12.9 at batch 1 compiled (results/decode_kernel/README.md).
    score_mods: decoding steps whose edits are all score_mods run as one fused FlexAttention pass:
      "auto" = on CUDA inside torch.compile (static-cache decoding) from `fused_min_rows` (sequence,
      head) rows per step; "reference" = on any device with FlexAttention's unfused reference (tests);
      "off" = never (the equivalent bias through SDPA instead).
    fused_min_rows: below it the fused kernel is slower than SDPA plus the bias (H100, 32 heads: 24.8
      vs 16.9 us at batch 1, 33.4 vs 40.2 us at batch 4, 43.9 vs 69.0 us at batch 8;
      results/bench_decode_attention.json).
    """

    decode_kernel: str = "auto"
    score_mods: str = "auto"
    fused_min_rows: int = 128

    def __post_init__(self) -> None:
        from lvlm_guard.errors import InterventionConfigError

        if self.decode_kernel not in ("auto", "on", "off"):
            raise InterventionConfigError(
                f"FastPaths.decode_kernel must be 'auto', 'on' or 'off', got {self.decode_kernel!r}"
            )
        if self.score_mods not in ("auto", "reference", "off"):
            raise InterventionConfigError(
                f"FastPaths.score_mods must be 'auto', 'reference' or 'off', got {self.score_mods!r}"
            )


DEFAULT_PATHS = FastPaths()


class KernelHealth:
    """Per guard: set when the kernel failed in "auto" mode (e.g. a GPU or Triton version it does
    not compile for): the bias path serves from then on, after one warning."""

    def __init__(self) -> None:
        self.failed = False


def _kernel_allowed(paths: FastPaths, health: KernelHealth, query, key, image_keys) -> bool:
    """The kernel has no backward: where gradients flow, the bias path (autograd) serves. It
    indexes the image mask by sequence: a mask of another batch falls to the bias path's checks."""
    if paths.decode_kernel == "off" or health.failed or not dk.TRITON_AVAILABLE or not dk.supports(query, key):
        return False
    if image_keys.shape[0] != query.shape[0] or (torch.is_grad_enabled() and query.requires_grad):
        return False
    return paths.decode_kernel == "on" or query.is_cuda


def _kernel_or_none(paths: FastPaths, health: KernelHealth, *args, **kwargs) -> torch.Tensor | None:
    """`decode_kernel.decode_attention`; in "auto" mode a failure warns once and returns None."""
    if paths.decode_kernel == "on" or torch.compiler.is_compiling():
        return dk.decode_attention(*args, **kwargs)
    try:
        return dk.decode_attention(*args, **kwargs)
    except Exception as error:  # the kernel is an optimisation: a failure must not stop generation
        health.failed = True
        warnings.warn(
            f"lvlm_guard: the fused attention kernel failed ({error!r}); the SDPA-bias path serves from now on",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _fused_allowed(paths: FastPaths, query: torch.Tensor) -> bool:
    """In "auto": only inside a compiled CUDA graph (called from eager code, the compiled kernel's
    dispatch costs more than the second key read it saves), and only for enough rows."""
    if paths.score_mods == "auto":
        rows = query.shape[0] * query.shape[1]
        return query.is_cuda and torch.compiler.is_compiling() and rows >= paths.fused_min_rows
    return paths.score_mods == "reference"


def edit_head_outputs(edits: Sequence[HeadOutputEdit], ctx: HeadOutputs, heads: torch.Tensor) -> torch.Tensor:
    """Per-head attention outputs `[b, q, h, d]` after each edit, in order (an edit with `heads`
    sees and changes only those heads)."""
    for edit in edits:
        if edit.heads is None:
            heads = edit.fn(ctx, heads)
        else:
            idx = torch.tensor(edit.heads, device=heads.device)
            heads = heads.index_copy(2, idx, edit.fn(ctx, heads.index_select(2, idx)))
    return heads


class LayerAttention:
    """The edits and taps of one decoder layer, called in place of the stock attention.

    Hot paths avoid host-to-device copies and extra kernels: while decoding, an edit that covers
    every head is one SDPA call with the edit's bias in place of the stock call; at prefill only
    the generating rows are recomputed and written into the stock output.
    """

    def __init__(
        self,
        layer: int,
        edits: list[AttentionEdit],
        state: GuardState,
        num_heads: int,
        head_edits: Sequence[HeadOutputEdit] = (),
        paths: FastPaths = DEFAULT_PATHS,
        health: KernelHealth | None = None,
    ) -> None:
        self.layer = layer
        self.paths = paths
        self.health = health if health is not None else KernelHealth()
        self.edits = edits
        #: per-head output edits (before `o_proj`), applied to this function's output: the same
        #: tensor an `o_proj` pre-hook would see, without a hook on the module (a hooked module
        #: takes torch's slower call path eagerly and adds a traced hook to every compiled step)
        self.head_edits = tuple(head_edits)
        self.state = state
        self.num_heads = num_heads
        self.heads = sorted({h for e in edits for h in (e.heads if e.heads is not None else range(num_heads))})
        self.all_heads = len(self.heads) == num_heads
        self.any_reweight = any(e.reweight is not None for e in edits)
        #: every edit is an all-head score_mod: a decoding step can run as one fused kernel
        self.fusable = bool(edits) and all(e.score_mod is not None and e.heads is None for e in edits)
        #: the layer's one all-head edit has a kernel form: a decoding step can run as one Triton launch
        self.kernel = edits[0].decode_kernel if len(edits) == 1 and edits[0].heads is None else None
        #: nothing to edit in this layer: only taps could need it (eager decoding is host-bound)
        self.passthrough = not edits and not self.head_edits
        self._index_cache: dict = {}
        self._stock: Callable | None = None

    def stock_for(self, module) -> Callable:
        """The stock function, looked up once: transformers' config attribute access costs ~10 us
        of host time per call, and eager decoding is bound by host time."""
        if self._stock is None:
            self._stock = stock_attention_function(module)
        return self._stock

    def __call__(self, module, query, key, value, attention_mask, stock: Callable, **kwargs):
        out, weights = self._attend(module, query, key, value, attention_mask, stock, **kwargs)
        if self.head_edits and self.state.active:
            out = edit_head_outputs(self.head_edits, HeadOutputs(self.layer, self.state), out)
        return out, weights

    def _attend(self, module, query, key, value, attention_mask, stock: Callable, **kwargs):
        state = self.state
        q_len = query.shape[2]
        edits = self.edits if state.active else ()
        tap = state.taps is not None and not state.suspended and state.taps.wants_attention(self.layer, q_len)
        if not edits and not tap:
            return stock(module, query, key, value, attention_mask, **kwargs)
        scaling = kwargs.get("scaling", module.scaling)
        group = query.shape[1] // key.shape[1]
        image_keys = state.image_keys_for(query.shape[0], key.shape[2], query.device)
        row_start = self._row_start(edits, q_len) if edits else q_len
        if (
            edits
            and self.kernel is not None
            and not tap
            and _kernel_allowed(self.paths, self.health, query, key, image_keys)
        ):
            result = self._kernel_attention(
                module, query, key, value, attention_mask, stock, image_keys, row_start, scaling, kwargs
            )
            if result is not None:  # None: the kernel failed, the bias path below serves
                return result
        if edits and q_len == 1 and self.fusable and not tap and _fused_allowed(self.paths, query):
            allowed = am.key_allowed(attention_mask, q_len, key.shape[2], query.device)
            mods = [(e.score_mod.fn, e.score_mod.weights(state, image_keys)) for e in edits]
            out = am.attend_with_score_mods(
                query, key, value, allowed, mods, scaling, compiled=self.paths.score_mods == "auto"
            )
            return out.transpose(1, 2).contiguous(), None
        if edits and row_start == 0 and self.all_heads and not self.any_reweight and not tap:
            allowed = am.key_allowed(attention_mask, q_len, key.shape[2], query.device)
            return self._attend_all(edits, query, key, value, allowed, image_keys, scaling, group), None
        out, weights = stock(module, query, key, value, attention_mask, **kwargs)
        if edits:
            allowed = am.key_allowed(attention_mask, q_len, key.shape[2], query.device, row_start)
            out = self._patch_rows(edits, query, key, value, allowed, image_keys, scaling, group, row_start, out)
        if tap:
            allowed = am.key_allowed(attention_mask, q_len, key.shape[2], query.device)
            heads = self._index(range(query.shape[1]), query.device)
            probs = self._edited_probs(edits, query, key, allowed, image_keys, scaling, group, heads, 0)
            state.taps.record_attention(self.layer, probs)
        return out, weights

    def _kernel_attention(
        self, module, query, key, value, attention_mask, stock, image_keys, row_start, scaling, kwargs
    ):
        """The layer's one edit through the fused kernel (`lvlm_guard.engine.kernels.decode_kernel`): a decoding
        step in one launch; at prefill the stock output with the edited rows written over it."""
        state, q_len = self.state, query.shape[2]
        sinks = self.kernel.sinks(state, self.layer) if self.kernel.sinks is not None else None
        allowed = am.key_allowed(attention_mask, q_len, key.shape[2], query.device, row_start)
        if q_len == 1:
            out = _kernel_or_none(
                self.paths, self.health, query, key, value, allowed, image_keys, self.kernel, sinks, scaling
            )
            return None if out is None else (out, None)
        out, weights = stock(module, query, key, value, attention_mask, **kwargs)
        rows = query[:, :, row_start:]
        ctx = AttentionRows(self.layer, rows, key, scaling, image_keys, allowed, row_start, False, state)
        apply = self._row_mask(self.edits[0], ctx)
        if apply is not None:
            apply = apply.expand(query.shape[0], rows.shape[2])
        new = _kernel_or_none(
            self.paths, self.health, rows, key, value, allowed, image_keys, self.kernel, sinks, scaling, apply=apply
        )
        if new is None:
            return None
        if torch.is_grad_enabled():
            out = out.clone()
        out[:, row_start:] = new
        return out, weights

    # --- which rows and heads ----------------------------------------------------------------------
    def _row_start(self, edits, q_len: int) -> int:
        """First query row to recompute: the prompt's last token, the first row after every
        sequence's image for `after_image` edits, or 0 when an edit needs every row."""
        if q_len == 1 or any(e.rows == "all" for e in edits):
            return 0
        if any(e.rows == "after_image" for e in edits):
            return self._first_row_after_images(q_len)
        first_generating = self.state.prompt_len - 1 - self.state.query_offset
        return min(max(first_generating, 0), q_len - 1)

    def _first_row_after_images(self, q_len: int) -> int:
        """Rows before this one precede some sequence's last image token (one host sync, at prefill)."""
        if self.state.image_keys is None or torch.compiler.is_compiling():
            return 0
        first_after = self.state.first_slot_after_all_images()
        return min(max(first_after - self.state.query_offset, 0), q_len - 1)

    def _index(self, values, device) -> torch.Tensor:
        """A cached index tensor on `device` (no host-to-device copy per call)."""
        key = (tuple(values), device)
        if key not in self._index_cache:
            self._index_cache[key] = torch.tensor(key[0], dtype=torch.long, device=device)
        return self._index_cache[key]

    def _head_slots(self, edit: AttentionEdit, device) -> torch.Tensor | None:
        """Indices of the edit's heads inside the union of edited heads (None: all of them)."""
        if edit.heads is None or list(edit.heads) == self.heads:
            return None
        return self._index([self.heads.index(h) for h in edit.heads], device)

    def _row_mask(self, edit: AttentionEdit, ctx: AttentionRows) -> torch.Tensor | None:
        """`[b|1, r]` bool of the selected rows this edit applies to; None where it is all of them.

        While decoding (one query) every row generates and comes after the image.
        """
        if edit.rows == "all" or ctx.decoding:
            return None
        if edit.rows == "after_image":
            if self.state.image_keys is None:
                return None  # no image: every row comes after it
            return ctx.row_positions() > self.state.last_image_slots()[:, None]
        first = self.state.prompt_len - (1 if edit.rows == "generating" else 0) - self.state.query_offset
        if ctx.row_start >= first:
            return None
        rows = torch.arange(ctx.row_start, ctx.row_start + ctx.query.shape[2], device=ctx.query.device)
        return (rows >= first)[None, :]

    # --- computing the edited attention --------------------------------------------------------------
    def _context(self, query, key, allowed, image_keys, scaling, group, heads, row_start) -> AttentionRows:
        if heads is not None:
            query = query.index_select(1, heads)
            key = am.repeat_kv_heads(key, heads, group)
        elif group > 1:
            key = am.repeat_kv(key, group)
        return AttentionRows(
            layer=self.layer,
            query=query[:, :, row_start:],
            key=key,
            scaling=scaling,
            image_keys=image_keys,
            key_allowed=allowed,  # already the rows from row_start on
            row_start=row_start,
            decoding=query.shape[2] == 1,
            state=self.state,
        )

    def _attend_all(self, edits, query, key, value, allowed, image_keys, scaling, group) -> torch.Tensor:
        """Every row and head edited by biases: one SDPA call replaces the stock one. `[b, q, h, d]`."""
        ctx = self._context(query, key, allowed, image_keys, scaling, group, None, 0)
        bias = self._total_bias(edits, ctx)
        value = am.repeat_kv(value, group) if group > 1 else value
        out = am.attend_with_bias(ctx.query, ctx.key, value, ctx.key_allowed, bias, scaling)
        return out.transpose(1, 2).contiguous()

    def _patch_rows(self, edits, query, key, value, allowed, image_keys, scaling, group, row_start, out):
        """Recompute rows `[row_start, q)` of the edited heads and write them into the stock output."""
        heads = None if self.all_heads else self._index(self.heads, query.device)
        if self.any_reweight:
            probs = self._edited_probs(edits, query, key, allowed, image_keys, scaling, group, heads, row_start)
            v_sel = value if heads is None and group == 1 else self._values(value, heads, group)
            new = torch.matmul(probs, v_sel.float()).to(out.dtype)
        else:
            ctx = self._context(query, key, allowed, image_keys, scaling, group, heads, row_start)
            bias = self._total_bias(edits, ctx)
            new = am.attend_with_bias(
                ctx.query, ctx.key, self._values(value, heads, group), ctx.key_allowed, bias, scaling
            )
        if torch.is_grad_enabled():
            out = out.clone()
        new = new.transpose(1, 2)  # [b, r, h, d]
        if heads is None:
            out[:, row_start:] = new
        else:
            out[:, row_start:, heads] = new
        return out

    @staticmethod
    def _values(value, heads, group):
        if heads is not None:
            return am.repeat_kv_heads(value, heads, group)
        return am.repeat_kv(value, group) if group > 1 else value

    def _total_bias(self, edits, ctx: AttentionRows) -> torch.Tensor | None:
        """Sum of every edit's bias over the block `[b, h, r, k]`, zero outside an edit's reach."""
        total = None
        for edit in edits:
            if edit.logit_bias is None and edit.score_mod is None:
                continue
            slots = self._head_slots(edit, ctx.query.device)
            rows = ctx if slots is None else ctx.select_heads(slots)
            bias = edit.logit_bias(rows) if edit.logit_bias is not None else edit.score_mod.bias(rows)
            row_mask = self._row_mask(edit, ctx)
            if row_mask is not None:
                bias = bias * row_mask[:, None, :, None].to(bias.dtype)
            if slots is not None:
                b, h, r, _ = ctx.query.shape
                full = torch.zeros(b, h, r, ctx.key.shape[2], dtype=bias.dtype, device=bias.device)
                bias = full.index_add(1, slots, bias)
            total = bias if total is None else total + bias
        return total

    def _edited_probs(self, edits, query, key, allowed, image_keys, scaling, group, heads, row_start):
        """Post-edit probabilities `[b, len(heads), r, k]` in float32 (reweights and taps)."""
        ctx = self._context(query, key, allowed, image_keys, scaling, group, heads, row_start)
        bias = self._total_bias(edits, ctx)
        probs = am.explicit_probs(ctx.query, ctx.key, ctx.key_allowed, bias, scaling)
        for edit in edits:
            if edit.reweight is None:
                continue
            slots = self._head_slots(edit, query.device)
            block = probs if slots is None else probs.index_select(1, slots)
            new_block = edit.reweight(ctx if slots is None else ctx.select_heads(slots), block)
            row_mask = self._row_mask(edit, ctx)
            if row_mask is not None:
                new_block = torch.where(row_mask[:, None, :, None], new_block, block)
            probs = new_block if slots is None else probs.index_copy(1, slots, new_block)
        return probs
