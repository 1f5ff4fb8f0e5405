"""Visual-token exit mechanics: after an exit layer, image tokens leave the sequence for real.

DyVTE (Wu, Lin, Ye, Zhou, Sun, Ji, "Accelerating Multimodal Large Language Models via Dynamic Visual-Token
Exit and the Empirical Findings") removes every visual token once the text tokens have read
what they need from them. Here the layers after `exit_layer` see a shorter sequence: the
pre-hook of layer `exit_layer + 1` gathers the kept (text, non-padding) rows of the hidden
states, re-packs them left-padded to the longest kept length of the batch, and rewrites for
every later layer the attention mask, the rotary cos/sin rows and `position_ids` (kept tokens
keep their original positions). The dynamic KV cache of those layers therefore only ever holds
text tokens, so prefill and every decoding step really get cheaper.

Cache bookkeeping: `kept_slots[b, k]` gives, for each entry of the short per-layer caches, the
slot (index in the full layer-0 sequence) of its token, or -1 for re-packing padding. Causality
and padding of later layers follow from it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from lvlm_guard.engine.cache_compat import forward_cache
from lvlm_guard.engine.state import GuardState
from lvlm_guard.errors import GuardStateError

SCRATCH_KEY = "token_exit"


def repack_indices(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For `keep[b, q]` bool: `(index[b, n], valid[b, n])`, the kept rows left-padded to n.

    n is the largest kept count of the batch (at least 1); padding rows point at row 0.
    """
    b, q = keep.shape
    counts = keep.sum(1)
    n = max(int(counts.max()) if b else 0, 1)
    rank = keep.long().cumsum(1) - 1
    dest = torch.where(keep, (n - counts)[:, None] + rank, n)  # non-kept rows go to a dump column
    index = torch.zeros(b, n + 1, dtype=torch.long, device=keep.device)
    index.scatter_(1, dest, torch.arange(q, device=keep.device).expand(b, q))
    valid = torch.zeros(b, n + 1, dtype=torch.bool, device=keep.device)
    valid.scatter_(1, dest, keep)
    return index[:, :n], valid[:, :n]


def short_key_allowed(key_slots: torch.Tensor, query_slots: torch.Tensor) -> torch.Tensor:
    """`[b, 1, n, K]` bool mask of the shortened layers.

    `key_slots[b, K]` / `query_slots[b, n]`: full-sequence slot of each key / query, -1 for
    re-packing padding. A real query sees real keys at or before its slot; a padding query
    sees only its own key (the last n keys are this forward's queries), so no row is empty.
    """
    n, k = query_slots.shape[1], key_slots.shape[1]
    causal = (key_slots[:, None, :] >= 0) & (key_slots[:, None, :] <= query_slots[:, :, None])
    own = torch.arange(k, device=key_slots.device)[None, :] == torch.arange(k - n, k, device=key_slots.device)[:, None]
    pad_row = query_slots < 0
    return (causal | (pad_row[:, :, None] & own[None]))[:, None]


def gather_rows(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows `index[b, n]` of `x` along its sequence axis `dim` (the batch axis is `dim - 1`)."""
    shape = list(x.shape)
    if shape[dim - 1] == 1 and index.shape[0] > 1:
        shape[dim - 1] = index.shape[0]
        x = x.expand(*shape)
    view = [1] * x.dim()
    view[dim - 1], view[dim] = index.shape
    idx = index.view(view)
    expand = list(x.shape)
    expand[dim] = index.shape[1]
    return x.gather(dim, idx.expand(*expand))


@dataclass
class _Forward:
    """What the layers after the exit get instead of the full-sequence arguments."""

    mask: torch.Tensor | None
    position_embeddings: tuple | None
    position_ids: torch.Tensor | None
    image_keys: torch.Tensor | None  # the full-length mask to restore after the last layer


@dataclass
class ExitBook:
    """Per-conversation bookkeeping of the short caches (reset at every new prefill)."""

    kept_slots: torch.Tensor | None = None  # [b, k_short]
    forward: _Forward | None = None
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    past: object | None = None
    active: bool = False
    deciding: bool = False  # this forward reads a new prompt: the router may decide
    exit_at: int | None = None  # the exit layer of this prompt (None: not exited yet)


class TokenExitHooks:
    """Installs the hooks that shrink the sequence after the exit layer (owned by a Guard).

    The exit layer is fixed (`exit_layer`) or found at prefill by `decide(layer, hidden,
    image_tokens[b, q], attention_mask) -> bool`, asked after each layer until it says exit
    (DyVTE's router, `lvlm_guard.methods.token_exit.router`).
    """

    def __init__(self, exit_layer: int | None, adapter, state: GuardState, decide=None) -> None:
        if exit_layer is None and decide is None:
            raise ValueError("token exit needs a fixed layer or a decision function")
        self.exit_layer = exit_layer
        self.decide = decide
        self.adapter = adapter
        self.state = state
        self.book = ExitBook()

    def install(self, model) -> list:
        layers = self.adapter.decoder_layers
        handles = [model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True)]
        first = 1 if self.exit_layer is None else self.exit_layer + 1
        for layer in range(first, len(layers)):
            handles.append(layers[layer].register_forward_pre_hook(self._layer_hook(layer), with_kwargs=True))
        if first < len(layers):
            handles.append(layers[-1].register_forward_hook(self._restore))
        return handles

    def _layer_hook(self, layer: int):
        def hook(module, args, kwargs):
            book = self.book
            if not book.active or self.state.suspended:  # e.g. VHR's image-free pass through the layers
                return None
            if book.exit_at is None and self.decide is not None and book.deciding:
                hidden = args[0] if args else kwargs["hidden_states"]
                image_tokens = self.adapter.image_token_mask(book.input_ids).to(hidden.device)
                if self.decide(layer - 1, hidden, image_tokens, book.attention_mask):
                    book.exit_at = layer - 1
            if book.exit_at is None or layer <= book.exit_at:
                return None
            if layer == book.exit_at + 1:
                return self._shrink(module, args, kwargs)
            return self._rewrite(module, args, kwargs)

        return hook

    # --- hooks -------------------------------------------------------------------------------------
    def _on_model_forward(self, module, args, kwargs):
        book = self.book
        book.active = self.state.active
        if not book.active:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise GuardStateError("token exit needs input_ids (to find the image tokens); got inputs_embeds only")
        past = forward_cache(kwargs)
        if past is not None and not isinstance(past, DynamicCache):
            raise GuardStateError(
                f"token exit needs a dynamic KV cache (its later layers hold fewer tokens); got {type(past).__name__}"
                " - static caches and torch.compile are not supported with exit"
            )
        book.deciding = past is None or past.get_seq_length() == 0  # a new prompt (or no cache)
        if book.deciding:
            book.kept_slots = None
            book.exit_at = self.exit_layer
        book.input_ids = input_ids
        book.attention_mask = kwargs.get("attention_mask")
        book.past = past
        book.forward = None
        return None

    def _shrink(self, module, args, kwargs):
        book = self.book
        if not book.active:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        b, q, _ = hidden.shape
        ids = book.input_ids
        past = book.past
        seen = int(past.get_seq_length()) - q if past is not None else 0  # layer 0 already holds this forward
        keep = ~self.adapter.image_token_mask(ids).to(hidden.device)
        if book.attention_mask is not None and book.attention_mask.dim() == 2:
            keep &= book.attention_mask[:, seen : seen + q].bool().to(hidden.device)
        index, valid = repack_indices(keep)
        slots = torch.where(valid, index + seen, -1)
        prev = book.kept_slots if past is not None else None
        key_slots = slots if prev is None else torch.cat([prev, slots], 1)
        if past is not None:
            book.kept_slots = key_slots
        allowed = short_key_allowed(key_slots, slots)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dtype != torch.bool:  # eager: additive float mask
            mask = torch.zeros(allowed.shape, dtype=mask.dtype, device=mask.device).masked_fill_(
                ~allowed, torch.finfo(mask.dtype).min
            )
        else:
            mask = allowed
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            pe = tuple(gather_rows(t, index, t.dim() - 2) for t in pe)
        pos = kwargs.get("position_ids")
        if pos is not None:
            pos = gather_rows(pos, index, pos.dim() - 1)
        full_keys = self.state.image_keys
        self.state.set_image_keys(torch.zeros(b, key_slots.shape[1], dtype=torch.bool, device=hidden.device))
        book.forward = _Forward(mask, pe, pos, full_keys)
        hidden = gather_rows(hidden, index, 1)
        return self._with(args, kwargs, hidden)

    def _rewrite(self, module, args, kwargs):
        if not self.book.active or self.book.forward is None:
            return None
        return self._with(args, kwargs, None)

    def _with(self, args, kwargs, hidden):
        fwd = self.book.forward
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = fwd.mask
        if fwd.position_embeddings is not None:
            kwargs["position_embeddings"] = fwd.position_embeddings
        if fwd.position_ids is not None:
            kwargs["position_ids"] = fwd.position_ids
        if hidden is not None:
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs["hidden_states"] = hidden
        return args, kwargs

    def _restore(self, module, args, output):
        fwd = self.book.forward
        if self.book.active and fwd is not None and not self.state.suspended:
            self.state.set_image_keys(fwd.image_keys)
            self.book.forward = None
        return None
