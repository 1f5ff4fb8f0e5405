"""Model adapters, one module per family; importing this package registers them all."""

from __future__ import annotations

from lvlm_guard.models import (
    gemma3,  # noqa: F401  (registers itself)
    idefics3,  # noqa: F401  (registers itself)
    internvl,  # noqa: F401  (registers itself)
    llava,  # noqa: F401  (registers itself)
    llava_next,  # noqa: F401  (registers itself)
    llava_onevision,  # noqa: F401  (registers itself)
    qwen2_vl,  # noqa: F401  (registers itself)
)
from lvlm_guard.models.base import ImageSpan, ModelAdapter, ModelSpec
from lvlm_guard.models.registry import (
    adapter_class_for_architecture,
    adapter_for,
    register_adapter,
    supported_architectures,
)

__all__ = [
    "ImageSpan",
    "ModelAdapter",
    "ModelSpec",
    "adapter_class_for_architecture",
    "adapter_for",
    "register_adapter",
    "supported_architectures",
]
