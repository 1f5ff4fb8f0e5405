"""Interventions, one module per method; importing this package registers them all."""

from __future__ import annotations

from lvlm_guard.methods.base import (
    Intervention,
    available_methods,
    method_class,
    parse_guard_spec,
    register_method,
)
from lvlm_guard.methods.pai import PAI
from lvlm_guard.methods.var import VAR

__all__ = ["PAI", "VAR", "Intervention", "available_methods", "method_class", "parse_guard_spec", "register_method"]
