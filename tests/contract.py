"""The guarantees every guard keeps on every family, in one place (tests/test_contract.py runs them
for every registered method; a method's own tests keep only what is particular to it).

- off = bit-identical: with the guard attached but disabled, greedy tokens and logits equal the
  plain model's; after detach too.
- cache == recomputation: each cached decoding step's logits equal a forward over the whole grown
  sequence without a cache.
- batch == one by one: a padded batch gives each sample's tokens alone.
- static cache == dynamic cache.
- or, where a method cannot work on a family: one typed InterventionConfigError at attach, and the
  model is left unguarded.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import lvlm_guard as lg


def image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


#: one single-image and one two-image prompt of different lengths (left padding, several images;
#: different sizes and aspect ratios: different token counts in the dynamic-resolution families)
IMAGES = [image(1, (40, 36)), [image(2, (24, 56)), image(3, (56, 16))]]
PROMPTS = ["what is this ?", "describe this picture in detail please"]
STEPS = 4


def extended(inputs: dict, next_ids: torch.Tensor) -> dict:
    """The per-token inputs with one more (text) token."""
    out = {
        "input_ids": torch.cat([inputs["input_ids"], next_ids], 1),
        "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(next_ids)], 1),
    }
    if "mm_token_type_ids" in inputs:  # Qwen-VL: 0 = text
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(next_ids)], 1)
    return out


def assert_shared_guarantees(
    model, processor, interventions, steps: int = STEPS, recompute: bool = True, static: bool = True
) -> None:
    """Every guarantee of the module docstring for `interventions` on this family's model.
    `static=False`: the method refuses a static cache with a typed error naming it instead."""
    builder = lg.Guard(model, processor, [])  # never attached: only builds inputs
    image_token = builder.adapter.image_token_id  # a random model may emit its image placeholder

    @torch.no_grad()
    def greedy(inputs, **kwargs):
        return model.generate(
            **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True,
            suppress_tokens=[image_token], **kwargs,
        )  # fmt: skip

    def inputs_now():  # fresh each time: some families' `generate` changes its inputs in place
        return builder.prepare(IMAGES, PROMPTS)

    plain = greedy(inputs_now())
    guard = lg.attach(model, processor, interventions)
    try:
        with guard.disabled():
            off = greedy(inputs_now())
        assert torch.equal(off.sequences, plain.sequences), "disabled guard changed the tokens"
        assert all(torch.equal(a, b) for a, b in zip(off.logits, plain.logits)), "disabled guard changed logits"
        if recompute:
            inputs = inputs_now()
            cached = greedy(inputs_now())
            ids, grown = inputs["input_ids"], dict(inputs)
            with torch.no_grad():
                for step in range(steps):
                    logits = model(**grown, use_cache=False).logits[:, -1]
                    torch.testing.assert_close(logits, cached.logits[step], rtol=1e-4, atol=1e-4)
                    next_ids = cached.sequences[:, ids.shape[1] + step : ids.shape[1] + step + 1]
                    grown = {**grown, **extended(grown, next_ids)}
        kwargs = {"max_new_tokens": steps, "suppress_tokens": [image_token]}
        batch = guard.generate(IMAGES, PROMPTS, **kwargs)
        single = [guard.generate([i], [p], **kwargs) for i, p in zip(IMAGES, PROMPTS)]
        assert batch.token_ids == [s.token_ids[0] for s in single], "a batch differs from its samples alone"
        if static:
            fixed = guard.generate(IMAGES, PROMPTS, cache_implementation="static", **kwargs)
            assert fixed.token_ids == batch.token_ids, "static cache differs from dynamic"
        else:
            try:
                guard.generate(IMAGES, PROMPTS, cache_implementation="static", **kwargs)
            except lg.GuardError as err:
                assert "static" in str(err)
            else:
                raise AssertionError("a method that refuses static caches generated with one")
    finally:
        guard.detach()
    after = greedy(inputs_now())
    assert torch.equal(after.sequences, plain.sequences), "detach did not restore the model"
    assert all(torch.equal(a, b) for a, b in zip(after.logits, plain.logits))
