"""VL-SAM orchestration: teacher-force the object word, fold attention into a map, prompt SAM.

The map of a word comes from one forward pass over prompt + answer (the answer holding the word,
as if the model had generated it), recorded with `FlowTaps` so that only the running flow is kept.
Open-ended mode first asks the VLM to list the objects, then localizes each (paper, Sec. 3.1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lvlm_guard.errors import InputMismatchError
from lvlm_guard.methods.base import layer_range
from lvlm_guard.methods.vlsam.attention_maps import DEFAULT_FLOW, FlowConfig, FlowTaps, map_to_image
from lvlm_guard.methods.vlsam.prompts import DEFAULT_PROMPTS, PromptConfig, box_from_map
from lvlm_guard.methods.vlsam.sam import SamRunner, Segmentation

if TYPE_CHECKING:
    from lvlm_guard.engine.guard import Guard

DEFAULT_PROMPT = "Describe the image."  # the word is then teacher-forced in a plain description
DEFAULT_ANSWER = "There is a {word} in the image."
LIST_PROMPT = "List the objects in the image."  # open-ended mode, first step


@dataclass
class Located:
    """word, its `[H, W]` map in [0, 1] at the image's size, the map's peak (x, y), the box of
    the map's hot region, and SAM's segmentation when one was asked for."""

    word: str
    heatmap: torch.Tensor
    point: tuple[int, int]
    box: tuple[float, float, float, float]
    segmentation: Segmentation | None = None


def _word_span(tokenizer, answer: str, word: str) -> tuple[list[int], int, int]:
    """Answer token ids and the [start, end) of the word's tokens inside them."""
    at = answer.find(word)
    if at < 0:
        raise InputMismatchError(f"attention_maps: {word!r} does not occur in the answer {answer!r}")
    before = tokenizer(answer[:at].rstrip(), add_special_tokens=False)["input_ids"] if at else []
    upto = tokenizer(answer[: at + len(word)], add_special_tokens=False)["input_ids"]
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    start = len(before)
    end = max(len(upto), start + 1)
    return ids, start, end


def token_maps(
    guard: Guard,
    image,
    prompt: str,
    answer_ids: Sequence[int],
    spans: Sequence[tuple[int, int]],
    flows: Sequence[FlowConfig],
) -> list[list[torch.Tensor]]:
    """Per flow, one `[H, W]` map per token span [start, end) of `answer_ids` (paper Sec. 3.2).

    One forward over image + `prompt` + `answer_ids` (the answer as generated, so the attention
    is the one the model had while generating it), recorded with `FlowTaps`. A span of several
    tokens takes the mean of their flow rows (the paper speaks of "the object token"; a word of
    two tokens gets both).
    """
    if not spans or not flows:
        return [[] for _ in flows]
    spec = guard.adapter.spec
    for cfg in flows:
        layer_range("vlsam", cfg.start_layer, cfg.end_layer, spec)
    inputs = guard.prepare([image], [prompt])
    ids = torch.tensor([list(answer_ids)], dtype=inputs["input_ids"].dtype, device=inputs["input_ids"].device)
    for start, end in spans:
        if not 0 <= start < end <= ids.shape[1]:
            raise InputMismatchError(f"token_maps: span [{start}, {end}) outside the {ids.shape[1]} answer tokens")
    prompt_len = inputs["input_ids"].shape[1]
    input_ids = torch.cat([inputs["input_ids"], ids], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(ids)], dim=1)
    n = input_ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()
    allowed = causal & mask[0].bool()[None, :] & mask[0].bool()[:, None]
    image_tokens = guard.adapter.image_token_mask(input_ids)  # [1, N]
    layers = frozenset(i for i in range(spec.num_layers) if any(cfg.uses_layer(i) for cfg in flows))
    taps = FlowTaps(attention_layers=layers, prefill_only=True, flows=tuple(flows), num_layers=spec.num_layers)
    taps.key_allowed = allowed[None]
    taps.image_tokens = image_tokens
    forward = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    previous = guard.state.taps
    guard.state.taps = taps
    try:
        with torch.no_grad():
            guard.model(input_ids=input_ids, attention_mask=mask, use_cache=False, **forward)
    finally:
        guard.state.taps = previous
    image_pos = torch.nonzero(image_tokens[0], as_tuple=True)[0]
    side = math.isqrt(len(image_pos))
    if side * side != len(image_pos):
        raise InputMismatchError(f"attention_maps: {len(image_pos)} image tokens do not form a square grid")
    size = (image.size[1], image.size[0])
    out = []
    for running in taps.running:
        flow_rows = running[0]
        maps = []
        for start, end in spans:
            rows = flow_rows[prompt_len + start : prompt_len + end]
            scores = rows.mean(dim=0)[image_pos.to(rows.device)]
            maps.append(map_to_image(scores.float().cpu(), (side, side), size))
        out.append(maps)
    return out


def attention_maps_for_flows(
    guard: Guard,
    image,
    answer: str,
    words: list[str],
    flows: Sequence[FlowConfig],
    prompt: str = DEFAULT_PROMPT,
) -> list[dict[str, torch.Tensor]]:
    """One `{word: [H, W] map}` per flow, all from one forward over image + prompt + `answer`."""
    if not words or not flows:
        return [{} for _ in flows]
    tokenizer = guard.processor.tokenizer
    spans = [_word_span(tokenizer, answer, w) for w in words]
    per_flow = token_maps(guard, image, prompt, spans[0][0], [(start, end) for _, start, end in spans], flows)
    return [dict(zip(words, maps)) for maps in per_flow]


def attention_maps(
    guard: Guard,
    image,
    answer: str,
    words: list[str],
    prompt: str = DEFAULT_PROMPT,
    flow: FlowConfig = DEFAULT_FLOW,
) -> dict[str, torch.Tensor]:
    """`{word: [H, W] map}` for words of `answer` (e.g. a generation's text) given image + prompt."""
    return attention_maps_for_flows(guard, image, answer, words, [flow], prompt)[0]


def located_from_map(word: str, heatmap: torch.Tensor, prompts: PromptConfig = DEFAULT_PROMPTS) -> Located:
    """The map's peak (x, y) and the box of its hot region (>= `prompts.box_threshold` * max)."""
    flat = int(heatmap.reshape(-1).argmax())
    y, x = divmod(flat, heatmap.shape[1])
    return Located(word, heatmap, (x, y), box_from_map(heatmap, prompts.box_threshold))


def locate(
    guard: Guard,
    image,
    word: str,
    *,
    prompt: str = DEFAULT_PROMPT,
    answer: str = DEFAULT_ANSWER,
    flow: FlowConfig = DEFAULT_FLOW,
    prompts: PromptConfig = DEFAULT_PROMPTS,
) -> Located:
    """Map, peak and map-derived box of `word` in `image`."""
    heatmap = attention_maps(guard, image, answer.format(word=word), [word], prompt, flow)[word]
    return located_from_map(word, heatmap, prompts)


def list_objects(guard: Guard, image, max_new_tokens: int = 48) -> list[str]:
    """Open-ended step one: ask the VLM for the objects, split its answer into names."""
    text = guard.generate([image], [LIST_PROMPT], max_new_tokens=max_new_tokens).texts[0]
    names = []
    for part in re.split(r",|;|\band\b|\n|\.", text.lower()):
        words = [w for w in re.findall(r"[a-z][a-z \-]*", part.strip())]
        name = re.sub(r"^(there (is|are) |the |an? |some |two |three |four )+", "", " ".join(words).strip())
        if name and name not in names:
            names.append(name)
    return names


def segment(
    guard: Guard,
    image,
    sam: SamRunner,
    word: str | None = None,
    *,
    prompt: str = DEFAULT_PROMPT,
    answer: str = DEFAULT_ANSWER,
    flow: FlowConfig = DEFAULT_FLOW,
    prompts: PromptConfig = DEFAULT_PROMPTS,
) -> list[Located]:
    """Masks, boxes and scores for `word`, or (word None) for every object the VLM lists."""
    words = [word] if word is not None else list_objects(guard, image)
    found = []
    for name in words:
        item = locate(guard, image, name, prompt=prompt, answer=answer, flow=flow, prompts=prompts)
        item.segmentation = sam.segment(image, item.heatmap, prompts)
        found.append(item)
    return found
