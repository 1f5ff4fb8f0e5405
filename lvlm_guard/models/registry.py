"""Architecture name -> adapter class. Adding a family is adding a file that registers itself."""

from __future__ import annotations

from torch import nn

from lvlm_guard.errors import UnsupportedModelError
from lvlm_guard.models.base import ModelAdapter

_ADAPTERS: dict[str, type[ModelAdapter]] = {}


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    for arch in cls.architectures:
        _ADAPTERS[arch] = cls
    return cls


def supported_architectures() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_class_for_architecture(architecture: str, *, source: str = "") -> type[ModelAdapter]:
    try:
        return _ADAPTERS[architecture]
    except KeyError:
        where = f" ({source})" if source else ""
        raise UnsupportedModelError(
            f"architecture {architecture!r}{where} is not supported; supported: " + ", ".join(supported_architectures())
        ) from None


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of a loaded model, chosen by its class name."""
    return adapter_class_for_architecture(type(model).__name__)(model)
