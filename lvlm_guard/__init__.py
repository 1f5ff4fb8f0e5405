"""lvlm_guard: cut object hallucination in LLaVA-style models by editing attention at run time.

Names are imported on first use (PEP 562), so `import lvlm_guard` and `lvlm-guard --help` do not
pay for torch and transformers until a model, guard or method is touched; `from lvlm_guard import X`
and `lvlm_guard.X` work as usual.
"""

from __future__ import annotations

import importlib

from lvlm_guard.errors import (
    GuardError,
    GuardStateError,
    ImageInputError,
    InputMismatchError,
    InterventionConfigError,
    InvalidSettingError,
    ModelNotFoundError,
    QuantizationUnavailableError,
    UnknownGuardError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "FastPaths": "lvlm_guard.engine.attention",
    "GenerationOutput": "lvlm_guard.engine.guard",
    "Guard": "lvlm_guard.engine.guard",
    "attach": "lvlm_guard.engine.guard",
    "load": "lvlm_guard.loading",
    "DoLa": "lvlm_guard.methods",
    "IAF": "lvlm_guard.methods",
    "PAI": "lvlm_guard.methods",
    "PAINT": "lvlm_guard.methods",
    "VAR": "lvlm_guard.methods",
    "VCD": "lvlm_guard.methods",
    "VHR": "lvlm_guard.methods",
    "Intervention": "lvlm_guard.methods",
    "available_methods": "lvlm_guard.methods",
    "parse_guard_spec": "lvlm_guard.methods",
    "ModelAdapter": "lvlm_guard.models",
    "ModelSpec": "lvlm_guard.models",
    "adapter_for": "lvlm_guard.models",
    "supported_architectures": "lvlm_guard.models",
    "Taps": "lvlm_guard.engine.taps",
    "FlowConfig": "lvlm_guard.methods.vlsam",
    "Located": "lvlm_guard.methods.vlsam",
    "PromptConfig": "lvlm_guard.methods.vlsam",
    "SamRunner": "lvlm_guard.methods.vlsam",
    "load_sam": "lvlm_guard.methods.vlsam",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lvlm_guard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "GuardError",
    "GuardStateError",
    "ImageInputError",
    "InputMismatchError",
    "InterventionConfigError",
    "InvalidSettingError",
    "ModelNotFoundError",
    "QuantizationUnavailableError",
    "UnknownGuardError",
    "UnsupportedModelError",
    *_LAZY,
]
