"""Exception types of the synthetic world, under the library's common `GuardError`."""

from __future__ import annotations

from lvlm_guard.errors import GuardError


class WorldError(GuardError):
    """Base class of errors raised while building or reading the synthetic world."""


class UnknownCategoryError(WorldError, KeyError):
    """A category name or id that the world does not draw."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnknownSplitError(WorldError, ValueError):
    """A split name the world was not built with."""


class WorldFormatError(WorldError, ValueError):
    """World files on disk are missing, or were written by another version or seed."""
