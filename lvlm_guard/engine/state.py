"""Per-guard state that the hooks read during a forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from lvlm_guard.engine.taps import Taps

T = TypeVar("T")


@dataclass
class GuardState:
    """Mutable state shared by one guard's hooks.

    `image_keys` holds, per sequence, which cache slots are image tokens. It is set from the
    prompt at prefill and only grows (with False) afterwards: generated tokens are text. The
    cache slot of a token equals its index in the prompt for both dynamic and static caches.
    """

    enabled: bool = True
    suspended: int = 0  # >0 while the guard runs its own auxiliary forwards (image-free branch)
    image_keys: torch.Tensor | None = None  # [b, k_capacity] bool
    prompt_ids: torch.Tensor | None = None  # [b, prompt_len] of the last prompt
    query_offset: int = 0  # cache slot of the first query of the last multi-token forward
    taps: Taps | None = None
    #: per-method state, one typed object per method class (`slot`): e.g. VAR's sink tokens
    slots: dict[type, Any] = field(default_factory=dict, repr=False)
    _weights: dict = field(default_factory=dict, repr=False)  # image_key_weights cache, one key length
    _image_ends: tuple | None = field(default=None, repr=False)  # (last image slots [b], first slot after all)

    def slot(self, kind: type[T]) -> T:
        """This guard's instance of a method's state class `kind` (made with `kind()` on first use)."""
        found = self.slots.get(kind)
        if found is None:
            found = self.slots[kind] = kind()
        return found

    def set_image_keys(self, image_keys: torch.Tensor) -> None:
        self.image_keys = image_keys
        self._weights.clear()
        self._image_ends = None

    def _ends(self) -> tuple[torch.Tensor, int]:
        """Computed once per prompt: every edited layer of a prefill asks, and the host sync in
        the second item, paid per layer, stalled eager prefill (launches stop overlapping)."""
        if self._image_ends is None:
            keys = self.image_keys
            idx = torch.arange(keys.shape[1], device=keys.device)
            last = torch.where(keys, idx, -1).amax(-1)
            self._image_ends = (last, int(last.min()) + 1)
        return self._image_ends

    def last_image_slots(self) -> torch.Tensor:
        """`[b]` cache slot of each sequence's last image token (-1: no image). Growing the
        cache with text slots (`image_keys_for`) leaves it unchanged."""
        return self._ends()[0]

    def first_slot_after_all_images(self) -> int:
        """The first cache slot after every sequence's last image token (one host sync per prompt)."""
        return self._ends()[1]

    @property
    def prompt_len(self) -> int:
        return 0 if self.prompt_ids is None else self.prompt_ids.shape[1]

    @property
    def active(self) -> bool:
        """Whether edits apply now."""
        return self.enabled and not self.suspended

    def image_keys_for(self, batch: int, k_len: int, device) -> torch.Tensor:
        """`[b, k_len]` image-key mask, padded with False (and cached) when the cache has grown."""
        keys = self.image_keys
        if keys is None:
            keys = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        if keys.shape[1] < k_len:
            pad = torch.zeros(keys.shape[0], k_len - keys.shape[1], dtype=torch.bool, device=keys.device)
            keys = torch.cat([keys, pad], dim=1)
            self.image_keys = keys
        if keys.shape[1] == k_len:
            return keys  # the usual case while decoding: no slicing op per layer
        return keys[:, :k_len]

    def image_key_weights(self, image_keys: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
        """`[b, 1, 1, k]` with `scale` at image keys; built once per decoding step, not per layer."""
        if torch.compiler.is_compiling():  # inductor fuses it; a Python cache would only add guards
            return (image_keys.to(dtype) * scale)[:, None, None, :]
        key = (image_keys.shape[1], dtype, scale)
        cached = self._weights.get(key)
        if cached is None:
            if self._weights and next(iter(self._weights))[0] != key[0]:
                self._weights.clear()  # the cache grew: weights of the old length are dead
            cached = self._weights[key] = (image_keys.to(dtype) * scale)[:, None, None, :]
        return cached
