"""Exception types of lvlm_guard: every bad input gets one of these, with a message naming it."""

from __future__ import annotations


class GuardError(Exception):
    """Base class of every error lvlm_guard raises on purpose."""


class ModelNotFoundError(GuardError):
    """A model id or directory could not be resolved to weights on this machine."""


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
