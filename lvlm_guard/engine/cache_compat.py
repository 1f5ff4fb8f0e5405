"""One place for the KV-cache name of the transformers version at hand.

transformers 5.24 renamed the model argument and output field `past_key_values` to `cache` (the old
argument is deprecated until 5.40); the GPU machine runs 5.17. Hooks and callers go through these
helpers so both spellings keep working.
"""

from __future__ import annotations

import inspect
from functools import cache as memoize
from typing import Any

from torch import nn


def forward_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache a forward was called with (either spelling), or None."""
    found = kwargs.get("cache")
    return found if found is not None else kwargs.get("past_key_values")


def output_cache(output: Any) -> Any:
    """The KV cache a model output carries (either field name), or None."""
    found = getattr(output, "cache", None)
    return found if found is not None else getattr(output, "past_key_values", None)


@memoize
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """`{name: cache}` with the argument name this model's forward takes."""
    return {_cache_argument(type(model)): cache}
