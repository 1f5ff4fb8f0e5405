"""lvlm_guard: cut object hallucination in LLaVA-style models by editing attention at run time."""

from __future__ import annotations

from lvlm_guard.errors import (
    GuardError,
    GuardStateError,
    ImageInputError,
    InputMismatchError,
    InterventionConfigError,
    ModelNotFoundError,
    QuantizationUnavailableError,
    UnknownGuardError,
    UnsupportedModelError,
)
from lvlm_guard.guard import GenerationOutput, Guard, attach
from lvlm_guard.loading import load
from lvlm_guard.methods import IAF, PAI, VAR, VHR, Intervention, available_methods, parse_guard_spec
from lvlm_guard.models import ModelAdapter, ModelSpec, adapter_for, supported_architectures
from lvlm_guard.taps import Taps
from lvlm_guard.vlsam import FlowConfig, Located, PromptConfig, SamRunner, load_sam

__version__ = "0.1.0"

__all__ = [
    "PAI",
    "IAF",
    "VAR",
    "VHR",
    "GenerationOutput",
    "Guard",
    "GuardError",
    "GuardStateError",
    "ImageInputError",
    "InputMismatchError",
    "Intervention",
    "InterventionConfigError",
    "ModelAdapter",
    "ModelNotFoundError",
    "ModelSpec",
    "QuantizationUnavailableError",
    "Taps",
    "FlowConfig",
    "Located",
    "PromptConfig",
    "SamRunner",
    "load_sam",
    "UnknownGuardError",
    "UnsupportedModelError",
    "adapter_for",
    "attach",
    "available_methods",
    "load",
    "parse_guard_spec",
    "supported_architectures",
]
