"""Typed, range-checked method settings: one checker for the API, the spec parser, the CLI and the app.

Every method config is a frozen dataclass; its field annotations give the type (`float`,
`int | None`, `tuple[int, ...] | None`, `bool`, `str`) and its `bounds` ClassVar the allowed range
or choices of a field. `check_settings` runs before the method's own `__post_init__` (wired in
`Intervention.__init_subclass__`), so a wrong type never reaches a comparison and every bad value
gets one `InvalidSettingError` naming the method, the field, the value and what is allowed.
`parse_setting` turns a spec string into the field's type with the same error.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from functools import cache

from lvlm_guard.errors import InvalidSettingError


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (None: unbounded), each end closed unless `*_open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        if self.high is None:
            return "any number" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    options: tuple[str, ...]

    def __contains__(self, value: str) -> bool:
        return value in self.options

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


NONNEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
UNIT = Range(0, 1)  # [0, 1]
LAYER = Range(0)  # a layer index; whether the model has it is checked at attach (check_layers)


@dataclass(frozen=True)
class FieldType:
    """What a field's annotation allows: the base kind, whether None is allowed, tuple of ints."""

    kind: type  # float, int, bool, str or tuple
    optional: bool

    def describe(self) -> str:
        kind = {float: "a number", int: "an integer", bool: "true or false", str: "a string",
                tuple: "a list of integers like 2;3;4"}[self.kind]  # fmt: skip
        return kind + (" or none" if self.optional else "")


@cache
def field_types(cls: type) -> dict[str, FieldType]:
    """Each dataclass field's FieldType, from the class's resolved annotations."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
        optional = type(None) in args
        (base,) = [a for a in args if a is not type(None)]
        kind = tuple if typing.get_origin(base) is tuple else base
        out[f.name] = FieldType(kind, optional)
    return out


def _error(cls: type, field: str, value: object, allowed: str) -> InvalidSettingError:
    return InvalidSettingError(cls.name, field, value, allowed)


def check_settings(config) -> None:
    """Type and range of every field of a method config; tuples normalised (lists accepted)."""
    cls = type(config)
    bounds = getattr(cls, "bounds", {})
    for name, ftype in field_types(cls).items():
        value = getattr(config, name)
        if value is None:
            if not ftype.optional:
                raise _error(cls, name, value, ftype.describe())
            continue
        if ftype.kind is tuple:
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(config, name, value)
            if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise _error(cls, name, value, ftype.describe())
            items = value
        elif ftype.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _error(cls, name, value, ftype.describe())
            if not math.isfinite(value):
                raise _error(cls, name, value, "a finite number")
            items = (value,)
        elif ftype.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _error(cls, name, value, ftype.describe())
            items = (value,)
        else:  # bool, str
            if not isinstance(value, ftype.kind):
                raise _error(cls, name, value, ftype.describe())
            items = (value,)
        allowed = bounds.get(name)
        if allowed is not None and not all(v in allowed for v in items):
            raise _error(cls, name, value, allowed.describe() + (" (every entry)" if ftype.kind is tuple else ""))


def parse_setting(cls: type, field: str, raw: str):
    """A spec string (`0.5`, `none`, `true`, `2;3;4`) as the value of `cls.field`'s type."""
    ftype = field_types(cls)[field]
    text = raw.strip()
    if text.lower() in ("none", "null"):
        if ftype.optional:
            return None
        raise _error(cls, field, raw, ftype.describe())
    try:
        if ftype.kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if ftype.kind is int:
            return int(text)
        if ftype.kind is float:
            return float(text)
        if ftype.kind is tuple:
            return tuple(int(x) for x in text.replace("/", ";").split(";") if x.strip())
    except ValueError:
        raise _error(cls, field, raw, ftype.describe()) from None
    return text


def describe_setting(cls: type, field: str) -> str:
    """What a field allows, in words: its type and range (for `lvlm-guard list` and the app)."""
    ftype = field_types(cls)[field]
    allowed = getattr(cls, "bounds", {}).get(field)
    return ftype.describe() + (f", {allowed.describe()}" if allowed is not None else "")
