"""Model loading and per-request guarded generation for the chat page (no streamlit import).

The page caches one `(model, processor)` per process and shares it between every browser
session. Attaching a guard mutates that shared model (attention implementation, hooks, the
`_lvlm_guard` attribute), so each request attaches its own guard and holds the model's lock
from attach to detach: two sessions with different guard settings run one after the other on
the same weights and get exactly the answers they would get alone. The cost is that concurrent
visitors wait for each other, which is the honest price of one model instance on one device; a
request that finds the lock taken calls its `on_wait` first, so the page can say so (QUEUE_MESSAGE).

The page describes each method from its own source: a one-line summary derived from the module
docstring (SUMMARIES; the docstring's first line for methods registered later), and per field the
comment after it in the config's source plus `describe_setting`'s type and range.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import sys
import textwrap
import threading
import tokenize
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache

import lvlm_guard as lg
from lvlm_guard.methods import vlsam
from lvlm_guard.methods.base import method_class
from lvlm_guard.methods.settings import FieldType, describe_setting, field_types, parse_setting
from lvlm_guard.threads import configure_threads

DEFAULT_MODEL = "tiny-coco"
UNGUARDED, GUARDED = "unguarded", "guarded"
# tiny-coco's "Describe the image." answers end by 103 tokens (24 test images, longest 103, median
# 56; measured for issue 21); 160 lets them finish with room to spare (the old 48 cut 13 of the 24).
DEFAULT_MAX_NEW_TOKENS = 160
QUEUE_MESSAGE = "Waiting for another request to finish: one model is shared by every visitor, one request at a time."
GENERATING_WORKERS = 1  # generations that run at once: the model lock lets one request generate
SERVER_CPUS = 1  # left to Streamlit's server: results/threads/README.md (2 OpenMP threads beside a busy one: 4.8x slower)

# What each method does and its paper, in one line, derived from its module's docstring.
SUMMARIES = {
    "pai": "Raises attention to the image tokens (score s + alpha|s|) from start_layer on, optionally with"
    " image-free contrastive decoding. Liu et al., ECCV 2024.",
    "paint": "A PAI variant: raises attention to the image patches the vision tower's CLS attention marks as"
    " informed, by one margin for local and one for summary tokens. Arif et al., arXiv 2501.12206.",
    "var": "Moves attention from visual sink tokens to the rest of the image in image-centric heads."
    ' Kang et al., ICLR 2025, "See What You Are Told".',
    "vhr": "Scales up the heads whose output changes most when the image is removed (vision-aware head"
    ' divergence). He et al., ACL 2025, "Cracking the Code of Hallucination in LVLMs".',
    "vcd": "Contrasts each next token's logits on the real image with those on a diffusion-noised copy,"
    " (1 + alpha) l - alpha l_noised, within a plausibility cut. Leng et al., CVPR 2024.",
    "dola": "Contrasts the final layer's next-token scores with an early layer's (chosen by"
    " Jensen-Shannon divergence), favouring what the later layers add. Chuang et al., ICLR 2024.",
    "exit": "Speed method, not a hallucination guard: the image tokens leave the sequence after a decoder"
    " layer (fixed, or DyVTE's learned router), trading some quality for time. Wu et al., DyVTE.",
}

_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Parameter:
    """One field of a method's config, as the page shows it."""

    name: str
    default: object
    kind: FieldType  # the annotation's type (settings.field_types)
    allowed: str  # type and range in words (settings.describe_setting)
    doc: str  # the comment after the field in the config's source ("" when there is none)
    choices: tuple[str, ...] = ()  # a Choice field's options (a select box), else empty

    @property
    def help(self) -> str:
        """The widget's help: what the field does, what it allows and its default."""
        what = f"{self.doc}. " if self.doc else ""
        return f"{what}Allowed: {self.allowed}. Default: {spec_value(self.default)}."

    @property
    def widget(self) -> str:
        """checkbox, int, float, choice or text (optional, tuple and free string fields are typed as spec text)."""
        if self.choices and not self.kind.optional:
            return "choice"
        if self.kind.optional or self.kind.kind in (tuple, str):
            return "text"
        return {bool: "checkbox", int: "int", float: "float"}[self.kind.kind]


@dataclass
class Answer:
    """One finished answer: its text and how many tokens it took against the limit it had."""

    text: str
    tokens: int
    max_new_tokens: int

    @property
    def cut(self) -> bool:
        return was_cut(self.tokens, self.max_new_tokens)


def was_cut(tokens: int, max_new_tokens: int) -> bool:
    """True when generation stopped at the token limit rather than at the end-of-sequence token
    (`Guard.generate`'s token_ids drop EOS, so an answer that ended by itself is shorter than the limit)."""
    return tokens >= max_new_tokens


def cut_note(answer: Answer) -> str | None:
    """The page's note under an answer that hit the limit (None when it ended by itself)."""
    if not answer.cut:
        return None
    return (
        f"Cut at {answer.max_new_tokens} tokens: the answer reached the max new tokens limit before it ended;"
        " raise the limit in the sidebar to let it finish."
    )


def method_title(name: str) -> str:
    """The toggle's label: "PAI — Paying More Attention to Image" (from the module docstring's first
    line), speed methods marked as such."""
    head = _doc_first_line(name).split("(")[0].strip().rstrip(".")
    acronym, sep, expansion = head.partition(":")
    title = f"{acronym.strip()} — {expansion.strip()}" if sep else f"{name.upper()} — {head}" if head else name.upper()
    return title + (" (speed method)" if method_class(name).purpose == "speed" else "")


def method_summary(name: str) -> str:
    """What the method does and its paper, in one line (SUMMARIES, else the docstring's first line)."""
    return SUMMARIES.get(name) or _doc_first_line(name) or name


def _doc_first_line(name: str) -> str:
    module = sys.modules[method_class(name).__module__]
    return (module.__doc__ or "").strip().split("\n")[0].strip()


@cache
def field_docs(cls: type) -> dict[str, str]:
    """`{field: the comment after it}` from the config class's source (and its dataclass bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (e.g. defined in a REPL)
            continue
        docs.update(_trailing_comments(source))
    return docs


def _trailing_comments(source: str) -> dict[str, str]:
    """Class-body lines `name: type = value  # comment` of a dedented class source -> {name: comment}."""
    found: dict[str, str] = {}
    lines = source.splitlines()
    body_indent = None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        row, col = token.start
        line = lines[row - 1]
        match = re.match(r"^(\s+)([A-Za-z_]\w*)\s*:", line)
        if not match or col == len(match.group(1)):  # a comment-only line, or not a field line
            continue
        indent = len(match.group(1))
        body_indent = indent if body_indent is None else body_indent
        if indent == body_indent:
            found[match.group(2)] = token.string.lstrip("#").strip().rstrip(".")
    return found


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: str = "float32"):
    """`(model, processor)`; float32 because the demo runs on CPU as well."""
    return lg.load(name_or_path, dtype=dtype)


def model_lock(model) -> threading.Lock:
    """The one lock of this model object: held while a guard is attached to it."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(id(model), threading.Lock())


def method_parameters(name: str) -> list[Parameter]:
    """A registered method's config fields with their defaults, documentation and allowed values
    (new methods appear by themselves)."""
    cls = method_class(name)
    types, docs, bounds = field_types(cls), field_docs(cls), getattr(cls, "bounds", {})
    return [
        Parameter(
            f.name,
            f.default,
            types[f.name],
            describe_setting(cls, f.name),
            docs.get(f.name, ""),
            tuple(getattr(bounds.get(f.name), "options", ())),
        )  # fmt: skip
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING
    ]


def parse_parameter(name: str, field: str, raw: str) -> object:
    """A value typed into a text field, as the field's type (`InvalidSettingError` saying what is allowed)."""
    return parse_setting(method_class(name), field, raw)


def check_method(name: str, params: dict[str, object]) -> None:
    """Build the method's config once: a bad value raises its typed `InvalidSettingError`."""
    method_class(name)(**params)


def guard_spec(selected: dict[str, dict[str, object]]) -> str:
    """A `parse_guard_spec` string from `{method: {param: value}}` (values equal to defaults omitted)."""
    parts = []
    for name, params in selected.items():
        defaults = {p.name: p.default for p in method_parameters(name)}
        items = [f"{k}={spec_value(v)}" for k, v in params.items() if k in defaults and v != defaults[k]]
        parts.append(":".join([name, *items]))
    return ",".join(parts) or "none"


def spec_value(value: object) -> str:
    """A value in spec syntax: `none`, `true`, `2;3;4`, floats exactly (repr)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ";".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


@contextmanager
def holding(lock: threading.Lock, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold `lock`; when another request has it, call `on_wait` (the page's queue message) and wait."""
    if not lock.acquire(blocking=False):
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def guarded(model, processor, spec: str, on_wait: Callable[[], None] | None = None) -> Iterator[lg.Guard]:
    """Attach the spec's guard to the shared model for one request, under the model's lock.

    The calling thread's torch threads are set for one generation at a time (it runs the heatmap
    and VL-SAM passes itself; `stream_answers`' worker sets its own)."""
    interventions = lg.parse_guard_spec(spec)  # bad parameters raise before the lock is taken
    with holding(model_lock(model), on_wait):
        configure_threads(workers=GENERATING_WORKERS, reserve=SERVER_CPUS)
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
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    finished: dict[str, Answer] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield `(which, text so far)` as tokens arrive: first the unguarded answer, then the guarded.

    Generation runs in a worker thread feeding a `TextIteratorStreamer` (its torch threads set by
    `configure_threads`); the worker is joined before the guard is detached, even when the caller
    stops iterating early. `finished[which]` receives each final `Answer` (token count: cut or not).
    """
    from transformers import TextIteratorStreamer

    with guarded(model, processor, spec, on_wait) as guard:
        for which, context in ((UNGUARDED, guard.disabled()), (GUARDED, nullcontext())):
            streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
            failure: list[BaseException] = []
            tokens: list[int] = []

            def work(streamer=streamer, failure=failure, tokens=tokens) -> None:
                try:
                    configure_threads(workers=GENERATING_WORKERS, reserve=SERVER_CPUS)  # OpenMP settings are per thread
                    out = guard.generate([image], [prompt], max_new_tokens=max_new_tokens, streamer=streamer)
                    tokens.append(len(out.token_ids[0]))
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
            if finished is not None:
                finished[which] = Answer(text.strip(), tokens[0] if tokens else 0, max_new_tokens)
            yield which, text.strip()


def answer_pair(
    model, processor, spec: str, image, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> dict[str, str]:
    """Both final answers (the streamed texts, fully consumed)."""
    answers = {UNGUARDED: "", GUARDED: ""}
    for which, text in stream_answers(model, processor, spec, image, prompt, max_new_tokens):
        answers[which] = text
    return answers


def word_heatmap(
    model, processor, spec: str, image, prompt: str, answer: str, word: str, guarded_run: bool, on_wait=None
):
    """`[H, W]` attention map (image size) of `word` in `answer`, with or without the guard's edits."""
    with guarded(model, processor, spec, on_wait) as guard:
        context = nullcontext() if guarded_run else guard.disabled()
        with context:
            return vlsam.attention_maps(guard, image, answer, [word], prompt=prompt)[word]


def locate_word(model, processor, spec: str, image, word: str, guarded_run: bool = False, on_wait=None):
    """VL-SAM's map, peak point and box for `word` on the unguarded or the guarded model."""
    with guarded(model, processor, spec, on_wait) as guard:
        with nullcontext() if guarded_run else guard.disabled():
            return vlsam.locate(guard, image, word)


def load_sam_runner(name_or_path: str) -> lg.SamRunner:
    """SAM or SAM 2 (hub id or local directory) for VL-SAM masks; loaded once per process by the page."""
    return lg.SamRunner(*lg.load_sam(name_or_path))


def segment_word(
    model, processor, spec: str, image, word: str, sam: lg.SamRunner, guarded_run: bool = False, on_wait=None
):
    """VL-SAM for `word` on the unguarded or guarded model: the map, its point prompts and SAM's mask."""
    with guarded(model, processor, spec, on_wait) as guard:
        with nullcontext() if guarded_run else guard.disabled():
            return vlsam.segment(guard, image, sam, word)[0]


def guard_spec_check(spec: str) -> None:
    """Raise the method's own typed error when the spec's parameters are invalid."""
    lg.parse_guard_spec(spec)
