"""The interface every intervention implements, and the name registry the CLI/app/evals share."""

from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from lvlm_guard.engine.edits import InterventionPlan
from lvlm_guard.errors import InterventionConfigError, UnknownGuardError
from lvlm_guard.methods.settings import Choice, Range, check_settings, parse_setting
from lvlm_guard.models.base import ModelSpec

if TYPE_CHECKING:
    from transformers import LogitsProcessor

    from lvlm_guard.engine.guard import Guard


@dataclass(frozen=True)
class Preset:
    """Settings a method's sources give for one model (or one code release), and where from."""

    values: Mapping[str, object]  # config field -> value
    source: str  # the paper's section/table or the official file:line the values come from

    def describe(self) -> str:
        settings = ", ".join(f"{k}={_format_value(v)}" for k, v in self.values.items())
        return f"{settings} ({self.source})"


class Intervention(ABC):
    """One published method. Subclasses are frozen dataclasses of their hyperparameters.

    Presets: a method whose papers give settings per model lists them in `presets` (the first one
    serves families without one of their own) and maps adapter families to them in
    `family_presets`. Its config then has a `preset` field ("auto": the loaded model's family
    decides; or a preset's name) and leaves each preset-controlled field None by default. When a
    guard is built, `for_family` fills the fields still None from the chosen preset: a value the
    user gives always wins. `lvlm-guard list` prints the presets.
    """

    name: ClassVar[str]
    presets: ClassVar[Mapping[str, Preset]] = {}
    family_presets: ClassVar[Mapping[str, str]] = {}  # adapter family -> preset name
    bounds: ClassVar[Mapping[str, Range | Choice]] = {}  # field -> allowed range or choices (settings.py)
    purpose: ClassVar[str] = "hallucination"  # or "speed": a method that trades quality for time (exit)

    def __init_subclass__(cls, **kwargs) -> None:
        """Every config's fields are type- and range-checked (settings.check_settings) before its
        own `__post_init__` runs, so bad values get one InvalidSettingError, never a TypeError."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if getattr(own, "_checks_settings", False):
            return

        def __post_init__(self) -> None:
            if dataclasses.is_dataclass(self):
                check_settings(self)
            if own is not None:
                own(self)
            else:
                super(cls, self).__post_init__()

        __post_init__._checks_settings = True
        cls.__post_init__ = __post_init__

    def __post_init__(self) -> None:
        return None

    @abstractmethod
    def plan(self, spec: ModelSpec) -> InterventionPlan:
        """The edits for a model of this shape; raises InterventionConfigError on bad layers/heads."""

    def preset_name(self, family: str | None) -> str | None:
        """The preset a model of `family` gets (None: the method has no presets)."""
        if not self.presets:
            return None
        chosen = getattr(self, "preset", "auto")
        if chosen == "auto":
            return self.family_presets.get(family or "", next(iter(self.presets)))
        return chosen

    def for_family(self, family: str | None) -> Intervention:
        """This config with its preset-controlled fields that are still None filled in from the
        preset for `family` (None: the default preset). Idempotent; explicit values are kept."""
        name = self.preset_name(family)
        if name is None:
            return self
        unset = {k: v for k, v in self.presets[name].values.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset) if unset else self

    def check_preset(self) -> None:
        """For `__post_init__`: the `preset` field names a preset or is "auto"."""
        chosen = getattr(self, "preset", "auto")
        if chosen != "auto" and chosen not in self.presets:
            raise InterventionConfigError(
                f"{self.name}: unknown preset {chosen!r}; presets: auto, {', '.join(self.presets)}"
            )

    def on_attach(self, guard: Guard) -> None:
        """Per-model preparation that needs the loaded model (e.g. finding sink dimensions)."""
        return None

    def on_prefill(self, guard: Guard, input_ids, attention_mask) -> None:
        """Per-prompt preparation before the model reads a new prompt (e.g. an image-free pass).
        `attention_mask`: the mask `generate` passed, 2-D or 4-D, or None."""
        return None

    def logits_processor(self, guard: Guard, inputs: dict) -> LogitsProcessor | None:
        """A decoding-time processor (e.g. contrastive refinement), or None."""
        return None


_METHODS: dict[str, type[Intervention]] = {}
#: old name -> registered name; the old one keeps working with a DeprecationWarning
_ALIASES: dict[str, str] = {"iaf": "paint"}  # IAF was PAINT's v1 title (arXiv 2501.12206v1)


def register_method(cls: type[Intervention]) -> type[Intervention]:
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_presets(name: str) -> list[tuple[str, Preset, list[str]]]:
    """A method's presets in order, each with the families that get it under `preset=auto`
    (the first preset also serves every family without one: listed as "default")."""
    cls = method_class(name)
    rows = []
    for i, (preset, values) in enumerate(cls.presets.items()):
        families = sorted(f for f, p in cls.family_presets.items() if p == preset)
        rows.append((preset, values, (["default"] if i == 0 else []) + families))
    return rows


def method_class(name: str) -> type[Intervention]:
    if name in _ALIASES:
        warnings.warn(
            f"guard name {name!r} is deprecated; use {_ALIASES[name]!r}", DeprecationWarning, stacklevel=2
        )
        name = _ALIASES[name]
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownGuardError(
            f"unknown guard {name!r}; available: {', '.join(available_methods())} (or 'none')"
        ) from None


def parse_guard_spec(spec: str) -> list[Intervention]:
    """Interventions from a spec like `"pai"`, `"pai:alpha=0.5:gamma=none,var"` or `"none"`.

    Values are parsed as their field's type (`none` where the field allows it; lists as `2;3;4`)
    and checked against its range: a bad key or value raises InterventionConfigError (InvalidSettingError
    for values) before any model is needed.
    """
    spec = spec.strip()
    if spec in ("", "none"):
        return []
    interventions = []
    for part in spec.split(","):
        name, *assignments = part.strip().split(":")
        cls = method_class(name.strip())
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {}
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or key not in fields:
                raise InterventionConfigError(
                    f"bad setting {assignment!r} for guard {name!r}; its settings: {', '.join(sorted(fields))}"
                )
            kwargs[key] = parse_setting(cls, key, raw)
        interventions.append(cls(**kwargs))
    return interventions


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return ";".join(map(str, value)) or "()"
    return str(value)


def check_layers(method: str, layers: Iterable[int], spec: ModelSpec) -> tuple[int, ...]:
    """Validated layer indices; the error names the method, the bad layers and the valid range."""
    layers = tuple(layers)
    bad = [layer for layer in layers if not 0 <= layer < spec.num_layers]
    if bad:
        raise InterventionConfigError(
            f"{method}: {_summarise(bad, 'layer')} not exist; the model has layers 0..{spec.num_layers - 1}"
        )
    return layers


def _summarise(indices: list[int], noun: str) -> str:
    """`layer 40 does` / `layers 32..998 (967 of them) do`: a short phrase however many there are."""
    if len(indices) == 1:
        return f"{noun} {indices[0]} does"
    if len(indices) <= 4:
        return f"{noun}s {', '.join(map(str, indices))} do"
    return f"{noun}s {min(indices)}..{max(indices)} ({len(indices)} of them) do"


def layer_range(
    method: str, start: int, end: int | None, spec: ModelSpec, default_end: int | None = None
) -> tuple[int, ...]:
    """Layers `[start, end)`, validated; `end` None means `default_end`, else every layer."""
    if end is None:
        end = spec.num_layers if default_end is None else default_end
    if end <= start:
        raise InterventionConfigError(f"{method}: empty layer range start_layer={start} end_layer={end}")
    return check_layers(method, range(start, end), spec)


def check_heads(method: str, heads: Iterable[int] | None, spec: ModelSpec) -> tuple[int, ...] | None:
    if heads is None:
        return None
    heads = tuple(heads)
    bad = [h for h in heads if not 0 <= h < spec.num_heads]
    if bad:
        raise InterventionConfigError(
            f"{method}: {_summarise(bad, 'head')} not exist; the model has heads 0..{spec.num_heads - 1}"
        )
    return heads
