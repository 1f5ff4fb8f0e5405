"""Pure tensor functions behind the attention edits; the hooks only find the tensors.

Everything here is a function of q, k, v and masks so it can be tested against float64 math.
Layouts follow transformers' attention functions: q `[b, h, q, d]`, k/v `[b, kv_h, k, d]`,
masks `[b|1, 1, q, k]` (bool: True = may attend; float: additive), outputs `[b, q, h, d]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

#: FlexAttention kernel options for the fused path. 8 warps: 24.8 vs 41.9 us (b1) and 43.9 vs
#: 56.0 us (b8) against the defaults on an H100 at LLaVA-7B shapes
#: (results/bench_decode_attention.json, scripts/bench_decode_attention.py)
FLEX_KERNEL_OPTIONS: dict | None = {"num_warps": 8}

#: an elementwise score rewrite and its per-key weights `[b, k]`
WeightedScoreMod = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor]


def key_allowed(
    attention_mask: torch.Tensor | None, q_len: int, k_len: int, device, row_start: int = 0
) -> torch.Tensor | None:
    """Boolean `[b|1, 1, r, k]` of the keys query rows `[row_start, q_len)` may attend to.

    Returns None when every key is allowed. `None` as input is what transformers passes when
    SDPA can use `is_causal`: causal attention with the queries at the end of the keys, except
    for the first prefill into a static cache, where SDPA crops the keys to the query length
    (see `sdpa_attention_forward`).
    """
    if attention_mask is None:
        effective_k = q_len if (q_len > 1 and k_len > q_len) else k_len
        if row_start == q_len - 1 and effective_k == k_len:
            return None  # the last row of a causal block sees every key
        query_pos = torch.arange(effective_k - q_len + row_start, effective_k, device=device)
        allowed = torch.arange(k_len, device=device)[None, :] <= query_pos[:, None]
        return allowed[None, None]
    if attention_mask.dtype != torch.bool:
        attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return attention_mask[:, :, row_start:] if attention_mask.shape[2] > 1 else attention_mask


def repeat_kv(states: torch.Tensor, group: int) -> torch.Tensor:
    """`[b, kv_h, k, d] -> [b, kv_h * group, k, d]`, each key/value head serving `group` query heads."""
    b, kv_heads, k, d = states.shape
    return states[:, :, None].expand(b, kv_heads, group, k, d).reshape(b, kv_heads * group, k, d)


def repeat_kv_heads(states: torch.Tensor, heads: torch.Tensor, group: int) -> torch.Tensor:
    """Key/value states of the given query heads under GQA: `[b, kv_h, k, d] -> [b, len(heads), k, d]`."""
    return states.index_select(1, torch.div(heads, group, rounding_mode="floor"))


def attend_with_bias(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    bias: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """softmax(q k^T * scaling + bias, masked) v through fused SDPA. Returns `[b, h, r, d]`.

    Masked keys get the dtype's minimum rather than -inf so a fully masked (padding) row gives
    a finite result, as transformers' own masks do.
    """
    if bias is None:
        additive = None if allowed is None else torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
    else:
        additive = bias.to(query.dtype)
    if allowed is not None:
        additive = additive.masked_fill(~allowed, torch.finfo(query.dtype).min)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=additive, scale=scaling)


def explicit_probs(
    query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor | None, bias: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Post-softmax attention `[b, h, r, k]` in float32 (for reweighting and taps)."""
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if bias is not None:
        logits = logits + bias
    if allowed is not None:
        logits = logits.masked_fill(~allowed, torch.finfo(torch.float32).min)
    return torch.softmax(logits, dim=-1)


@cache
def _compiled_flex_attention() -> Callable:
    """FlexAttention compiled once per process for any shape (the key length grows every step)."""
    return torch.compile(flex_attention, dynamic=True)


def attend_with_score_mods(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    mods: Sequence[WeightedScoreMod],
    scaling: float,
    compiled: bool = True,
) -> torch.Tensor:
    """softmax(fn_n(..fn_1(q k^T * scaling, w_1).., w_n), masked) v in one fused pass. `[b, h, r, d]`.

    FlexAttention applies the rewrites while it streams the keys, so an edit that needs the
    scores (PAI's `alpha * |s|`) reads the key cache once, as plain attention does; computing the
    bias first and handing it to SDPA reads it twice. Keys may have fewer heads (GQA).
    `compiled=False` runs FlexAttention's unfused reference (any device; for tests). Inside a
    `torch.compile`d region the kernel is generated as part of the surrounding graph.
    """
    key_ok = None if allowed is None else allowed[:, 0]  # [b|1, r, k]
    per_batch = key_ok is not None and key_ok.shape[0] > 1

    def score_mod(score, b, h, q, kv):
        for fn, weights in mods:
            score = fn(score, weights[b, kv])
        if key_ok is not None:
            score = torch.where(key_ok[b if per_batch else 0, q, kv], score, -float("inf"))
        return score

    if torch.compiler.is_compiling() or not compiled:
        flex = flex_attention
    else:
        flex = _compiled_flex_attention()
    return flex(
        query,
        key,
        value,
        score_mod=score_mod,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
        kernel_options=FLEX_KERNEL_OPTIONS,
    )
