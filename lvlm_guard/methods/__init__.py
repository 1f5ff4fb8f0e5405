"""Interventions, one module per method; importing this package registers them all."""

from __future__ import annotations

from lvlm_guard.methods.base import (
    Intervention,
    Preset,
    available_methods,
    method_class,
    method_presets,
    parse_guard_spec,
    register_method,
)
from lvlm_guard.methods.dola import DoLa
from lvlm_guard.methods.pai import PAI
from lvlm_guard.methods.paint import PAINT
from lvlm_guard.methods.token_exit import VisualTokenExit
from lvlm_guard.methods.var import VAR
from lvlm_guard.methods.vcd import VCD
from lvlm_guard.methods.vhr import VHR

IAF = PAINT  # deprecated: the guard once named "iaf" is PAINT (the spec parser maps "iaf" to "paint")

__all__ = [
    "DoLa",
    "IAF",
    "PAI",
    "PAINT",
    "VAR",
    "VCD",
    "VHR",
    "VisualTokenExit",
    "Intervention",
    "available_methods",
    "method_class",
    "method_presets",
    "Preset",
    "parse_guard_spec",
    "register_method",
]
