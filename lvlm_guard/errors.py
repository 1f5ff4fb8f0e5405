"""Exception types of lvlm_guard: every bad input gets one of these, with a message naming it."""

from __future__ import annotations


class GuardError(Exception):
    """Base class of every error lvlm_guard raises on purpose."""


class ModelNotFoundError(GuardError):
    """A model id or directory could not be resolved to weights on this machine."""


class LoadOptionError(GuardError, ValueError):
    """A `load()` option is not one it knows (dtype, quantization)."""


class UnsupportedModelError(GuardError):
    """The model's architecture has no adapter."""


class QuantizationUnavailableError(GuardError):
    """4-/8-bit loading was asked for but bitsandbytes (or a GPU) is missing."""


class InputMismatchError(GuardError, ValueError):
    """Images and prompts do not line up (counts, placeholders)."""


class ImageInputError(GuardError, ValueError):
    """An image could not be read or is empty."""


class InterventionConfigError(GuardError, ValueError):
    """An intervention names layers or heads the model does not have, or bad parameters."""


class GuardStateError(GuardError, RuntimeError):
    """A guard is used in a state that does not allow it (attached twice, used after detach)."""


class UnknownGuardError(GuardError, KeyError):
    """A guard name given on the command line or in a spec is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InvalidSettingError(InterventionConfigError):
    """A method setting of the wrong type or outside its range: names the method, the field, the
    value given and what is allowed."""

    def __init__(self, method: str, field: str, value: object, allowed: str) -> None:
        self.method, self.field, self.value, self.allowed = method, field, value, allowed
        super().__init__(f"{method}: {field}={value!r} is not allowed; {field} must be {allowed}")


class ClsAttentionUnavailableError(InterventionConfigError):
    """A method that reads the vision tower's CLS attention (PAINT) was attached to a family whose
    tower has no CLS token, or whose image tokens the adapter cannot map back to patches."""
