"""Model loading and per-request guarded generation for the chat page (no streamlit import).

The page caches one `(model, processor)` per process and shares it between every browser
session. Attaching a guard mutates that shared model (attention implementation, hooks, the
`_lvlm_guard` attribute), so each request attaches its own guard and holds the model's lock
from attach to detach: two sessions with different guard settings run one after the other on
the same weights and get exactly the answers they would get alone. The cost is that concurrent
visitors wait for each other, which is the honest price of one model instance on one device.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import lvlm_guard as lg
from lvlm_guard.methods.base import method_class

DEFAULT_MODEL = "tiny-coco"
UNGUARDED, GUARDED = "unguarded", "guarded"

_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Parameter:
    """One field of a method's config, as the page shows it."""

    name: str
    default: object


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: str = "float32"):
    """`(model, processor)`; float32 because the demo runs on CPU as well."""
    return lg.load(name_or_path, dtype=dtype)


def model_lock(model) -> threading.Lock:
    """The one lock of this model object: held while a guard is attached to it."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(id(model), threading.Lock())


def method_parameters(name: str) -> list[Parameter]:
    """A registered method's config fields with their defaults (new methods appear by themselves)."""
    cls = method_class(name)
    return [Parameter(f.name, f.default) for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]


def guard_spec(selected: dict[str, dict[str, object]]) -> str:
    """A `parse_guard_spec` string from `{method: {param: value}}` (values equal to defaults omitted)."""
    parts = []
    for name, params in selected.items():
        defaults = {p.name: p.default for p in method_parameters(name)}
        items = [f"{k}={_spec_value(v)}" for k, v in params.items() if k in defaults and v != defaults[k]]
        parts.append(":".join([name, *items]))
    return ",".join(parts) or "none"


def _spec_value(value: object) -> str:
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


@contextmanager
def guarded(model, processor, spec: str) -> Iterator[lg.Guard]:
    """Attach the spec's guard to the shared model for one request, under the model's lock."""
    interventions = lg.parse_guard_spec(spec)  # bad parameters raise before the lock is taken
    with model_lock(model):
        guard = lg.attach(model, processor, interventions)
        try:
            yield guard
        finally:
            guard.detach()


def stream_answers(
    model,
    processor,
    spec: str,
    image,
    prompt: str,
    max_new_tokens: int = 48,
) -> Iterator[tuple[str, str]]:
    """Yield `(which, text so far)` as tokens arrive: first the unguarded answer, then the guarded.

    Generation runs in a worker thread feeding a `TextIteratorStreamer`; the worker is joined
    before the guard is detached, even when the caller stops iterating early.
    """
    from transformers import TextIteratorStreamer

    with guarded(model, processor, spec) as guard:
        for which, context in ((UNGUARDED, guard.disabled()), (GUARDED, nullcontext())):
            streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
            failure: list[BaseException] = []

            def work(streamer=streamer, failure=failure) -> None:
                try:
                    guard.generate([image], [prompt], max_new_tokens=max_new_tokens, streamer=streamer)
                except BaseException as err:  # re-raised in the caller's thread below
                    failure.append(err)
                    streamer.end()

            with context:
                worker = threading.Thread(target=work, daemon=True)
                worker.start()
                text = ""
                try:
                    for piece in streamer:
                        text += piece
                        yield which, text.strip()
                finally:
                    worker.join()
            if failure:
                raise failure[0]
            yield which, text.strip()


def answer_pair(model, processor, spec: str, image, prompt: str, max_new_tokens: int = 48) -> dict[str, str]:
    """Both final answers (the streamed texts, fully consumed)."""
    answers = {UNGUARDED: "", GUARDED: ""}
    for which, text in stream_answers(model, processor, spec, image, prompt, max_new_tokens):
        answers[which] = text
    return answers


def word_heatmap(model, processor, spec: str, image, prompt: str, answer: str, word: str, guarded_run: bool):
    """`[H, W]` attention map (image size) of `word` in `answer`, with or without the guard's edits."""
    with guarded(model, processor, spec) as guard:
        context = nullcontext() if guarded_run else guard.disabled()
        with context:
            return guard.attention_maps(image, answer, [word], prompt=prompt)[word]


def locate_word(model, processor, spec: str, image, word: str):
    """VL-SAM's map, peak point and box for `word` (None when this lvlm_guard has no VL-SAM)."""
    with guarded(model, processor, spec) as guard:
        if not hasattr(guard, "locate"):
            return None
        with guard.disabled():
            return guard.locate(image, word)


def load_sam_runner(name_or_path: str) -> lg.SamRunner:
    """SAM or SAM 2 (hub id or local directory) for VL-SAM masks; loaded once per process by the page."""
    return lg.SamRunner(*lg.load_sam(name_or_path))


def segment_word(model, processor, spec: str, image, word: str, sam: lg.SamRunner):
    """VL-SAM for `word`: the map, its point prompts and SAM's mask (the first `Located`)."""
    with guarded(model, processor, spec) as guard, guard.disabled():
        return guard.segment(image, word, sam=sam)[0]


def has_vlsam() -> bool:
    return hasattr(lg.Guard, "segment")


def guard_spec_check(spec: str) -> None:
    """Raise the method's own typed error when the spec's parameters are invalid."""
    lg.parse_guard_spec(spec)
