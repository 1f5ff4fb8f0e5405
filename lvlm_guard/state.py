"""Per-guard state that the hooks read during a forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lvlm_guard.taps import Taps


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
    scratch: dict[str, Any] = field(default_factory=dict)  # per-method data (e.g. sink tokens)

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
        return keys[:, :k_len]
