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
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from lvlm_guard import attention_math as am
from lvlm_guard.edits import AttentionEdit, AttentionRows
from lvlm_guard.state import GuardState

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
    stock = stock_attention_function(module)
    if layer_attention is None:
        return stock(module, query, key, value, attention_mask, **kwargs)
    return layer_attention(module, query, key, value, attention_mask, stock, **kwargs)


class LayerAttention:
    """The edits and taps of one decoder layer, called in place of the stock attention."""

    def __init__(self, layer: int, edits: list[AttentionEdit], state: GuardState, num_heads: int) -> None:
        self.layer = layer
        self.edits = edits
        self.state = state
        self.num_heads = num_heads
        heads = sorted({h for e in edits for h in (e.heads if e.heads is not None else range(num_heads))})
        self.heads = heads  # union of edited heads

    def __call__(self, module, query, key, value, attention_mask, stock: Callable, **kwargs):
        state = self.state
        q_len = query.shape[2]
        edits = list(self.edits) if state.active else []
        tap = state.taps is not None and not state.suspended and state.taps.wants_attention(self.layer, q_len)
        out, weights = stock(module, query, key, value, attention_mask, **kwargs)
        if not edits and not tap:
            return out, weights
        batch, k_len = query.shape[0], key.shape[2]
        group = query.shape[1] // key.shape[1]
        allowed = am.key_allowed(attention_mask, q_len, k_len, query.device)
        image_keys = state.image_keys_for(batch, k_len, query.device)
        scaling = kwargs.get("scaling", module.scaling)
        if edits:
            out = self._apply_edits(edits, query, key, value, allowed, image_keys, scaling, group, out)
        if tap:
            all_heads = torch.arange(query.shape[1], device=query.device)
            rows = torch.arange(q_len, device=query.device)
            probs = self._edited_probs(
                edits, query, key, allowed, image_keys, scaling, group, all_heads, rows
            )
            state.taps.record_attention(self.layer, probs)
        return out, weights

    # --- the edited rows -------------------------------------------------------------------------
    def _rows(self, edits: list[AttentionEdit], q_len: int, device) -> torch.Tensor:
        """Query rows to recompute: the generating ones, unless some edit needs all rows."""
        if q_len == 1:
            return torch.zeros(1, dtype=torch.long, device=device)
        if any(e.rows in ("all", "after_image") for e in edits):
            return torch.arange(q_len, device=device)
        first_generating = self.state.prompt_len - 1 - self.state.query_offset
        return torch.arange(min(max(first_generating, 0), q_len - 1), q_len, device=device)

    def _apply_edits(self, edits, query, key, value, allowed, image_keys, scaling, group, out):
        rows = self._rows(edits, query.shape[2], query.device)
        heads = torch.tensor(self.heads, device=query.device)
        v_sel = am.repeat_kv_heads(value, heads, group)
        if any(e.reweight is not None for e in edits):
            probs = self._edited_probs(edits, query, key, allowed, image_keys, scaling, group, heads, rows)
            new = torch.matmul(probs, v_sel.float()).to(out.dtype)  # [b, h, r, d]
        else:
            ctx = self._context(query, key, allowed, image_keys, scaling, group, heads, rows)
            bias = self._total_bias(edits, ctx, heads)
            new = am.attend_with_bias(ctx.query, ctx.key, v_sel, ctx.key_allowed, bias, scaling)
        out = out.clone()
        out[:, rows[:, None], heads[None, :]] = new.permute(0, 2, 1, 3)
        return out

    def _context(self, query, key, allowed, image_keys, scaling, group, heads, rows) -> AttentionRows:
        allowed_rows = allowed.index_select(2, rows)
        return AttentionRows(
            layer=self.layer,
            query=query.index_select(1, heads).index_select(2, rows),
            key=am.repeat_kv_heads(key, heads, group),
            scaling=scaling,
            image_keys=image_keys,
            row_positions=am.row_positions(allowed_rows, query.shape[0]),
            key_allowed=allowed_rows,
            state=self.state,
            row_index=rows,
            decoding=query.shape[2] == 1,
        )

    def _row_mask(self, edit: AttentionEdit, ctx: AttentionRows) -> torch.Tensor | None:
        """`[b, r]` bool of the selected rows this edit applies to; None where it is all of them.

        While decoding (one query) every row generates and comes after the image.
        """
        if edit.rows == "all" or ctx.decoding:
            return None
        if edit.rows == "after_image":
            idx = torch.arange(ctx.image_keys.shape[1], device=ctx.image_keys.device)
            last_image = torch.where(ctx.image_keys, idx, -1).amax(-1)  # [b]
            return ctx.row_positions > last_image[:, None]
        first = self.state.prompt_len - (1 if edit.rows == "generating" else 0)
        rows = ctx.row_index + self.state.query_offset >= first  # [r]
        return rows[None, :].expand_as(ctx.row_positions)

    def _head_slots(self, edit: AttentionEdit) -> torch.Tensor | None:
        """Indices of the edit's heads inside the union of edited heads (None: all of them)."""
        if edit.heads is None or list(edit.heads) == self.heads:
            return None
        return torch.tensor([self.heads.index(h) for h in edit.heads])

    def _total_bias(self, edits, ctx: AttentionRows, heads) -> torch.Tensor:
        """Sum of every edit's bias over the union block `[b, h, r, k]`, zero outside an edit's reach."""
        b, h, r, _ = ctx.query.shape
        total = torch.zeros(b, h, r, ctx.key.shape[2], dtype=torch.float32, device=ctx.query.device)
        for edit in edits:
            if edit.logit_bias is None:
                continue
            slots = self._head_slots(edit)
            bias = edit.logit_bias(ctx if slots is None else ctx.select_heads(slots.to(heads.device)))
            row_mask = self._row_mask(edit, ctx)
            if row_mask is not None:
                bias = bias * row_mask[:, None, :, None].to(bias.dtype)
            if slots is None:
                total = total + bias
            else:
                total = total.index_add(1, slots.to(heads.device), bias)
        return total

    def _edited_probs(self, edits, query, key, allowed, image_keys, scaling, group, heads, rows):
        """Post-edit probabilities `[b, len(heads), len(rows), k]` in float32."""
        ctx = self._context(query, key, allowed, image_keys, scaling, group, heads, rows)
        bias = self._total_bias(edits, ctx, heads) if edits else None
        probs = am.explicit_probs(ctx.query, ctx.key, ctx.key_allowed, bias, scaling)
        for edit in edits:
            if edit.reweight is None:
                continue
            slots = self._head_slots(edit)
            if slots is not None:
                slots = slots.to(heads.device)
            block = probs if slots is None else probs.index_select(1, slots)
            new_block = edit.reweight(ctx if slots is None else ctx.select_heads(slots), block)
            row_mask = self._row_mask(edit, ctx)
            if row_mask is not None:
                new_block = torch.where(row_mask[:, None, :, None], new_block, block)
            probs = new_block if slots is None else probs.index_copy(1, slots, new_block)
        return probs
