"""Guard lifecycle on a tiny random LLaVA: identity when off, exact reach when on, cache invariance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import assert_cached_equals_recomputation, tiny_llava

import lvlm_guard as lg
from lvlm_guard.engine.edits import HeadOutputEdit, HiddenStateEdit, InterventionPlan
from lvlm_guard.methods.base import Intervention


def image(seed: int, size=(40, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


IMAGES = [image(1), [image(2), image(3)]]
PROMPTS = ["what is this ?", "describe this picture in detail please"]


@pytest.fixture(params=["sdpa", "eager"])
def llava(request):
    return tiny_llava(attn_implementation=request.param)


def logits_of(model, processor, guard=None):
    g = guard or lg.Guard(model, processor, [])  # only for prepare(); never attached
    inputs = g.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        return model(**inputs).logits


def test_off_guard_and_detach_are_bit_identical(llava):
    model, processor = llava
    plain_logits = logits_of(model, processor)
    plain_gen = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        plain_tokens = model.generate(**plain_gen, max_new_tokens=6, do_sample=False)

    guard = lg.attach(model, processor, [])
    assert torch.equal(logits_of(model, processor, guard), plain_logits)
    with torch.no_grad():
        assert torch.equal(model.generate(**plain_gen, max_new_tokens=6, do_sample=False), plain_tokens)
    guard.detach()

    guard = lg.attach(model, processor, [lg.PAI(alpha=0.5, gamma=None)])
    assert not torch.equal(logits_of(model, processor, guard), plain_logits)
    with guard.disabled():
        assert torch.equal(logits_of(model, processor, guard), plain_logits)
    guard.detach()
    assert torch.equal(logits_of(model, processor), plain_logits)


def test_detach_restores_attention_implementation_and_state_dict(llava):
    model, processor = llava
    before_impl = model.config.get_text_config()._attn_implementation
    before = {k: v.clone() for k, v in model.state_dict().items()}
    guard = lg.attach(model, processor, [lg.PAI(gamma=None)])
    assert model.config.get_text_config()._attn_implementation.startswith("lvlm_guard_")
    guard.detach()
    assert model.config.get_text_config()._attn_implementation == before_impl
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(hasattr(m, "_lvlm_guard_attention") for m in model.modules())


def test_pai_changes_exactly_its_layers_and_the_generating_row():
    model, processor = tiny_llava(num_layers=5)
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.8, start_layer=2, end_layer=4, gamma=None)])
    inputs = guard.prepare(IMAGES, PROMPTS)
    layers = list(range(5))

    def taps():
        with guard.tap(attention_layers=layers, hidden_layers=range(6)) as t, torch.no_grad():
            model(**inputs)
        return t

    on = taps()
    with guard.disabled():
        off = taps()
    for layer in layers:
        a, b = on.attention[layer][0], off.attention[layer][0]
        if layer < 2:  # before the edited layers nothing moves, inputs included
            assert torch.equal(a, b)
            continue
        if layer in (2, 3):
            assert not torch.allclose(a[:, :, -1], b[:, :, -1])
            image_keys = guard.adapter.image_token_mask(inputs["input_ids"])
            gained = (a[:, :, -1] * image_keys[:, None]).sum(-1) - (b[:, :, -1] * image_keys[:, None]).sum(-1)
            assert (gained > 0).all(), "PAI must raise the image share of every head"
        if layer == 2:  # at the first edited layer, only the last row changes
            torch.testing.assert_close(a[:, :, :-1], b[:, :, :-1], rtol=0, atol=0)
    # hidden states: inputs of layers 0..2 untouched; the layer-2 output differs only in the last row
    for index in range(3):
        assert torch.equal(on.hidden_states[index][0], off.hidden_states[index][0])
    diff = (on.hidden_states[3][0] - off.hidden_states[3][0]).abs().amax(-1)  # [b, q]
    assert (diff[:, :-1] == 0).all() and (diff[:, -1] > 0).all()
    guard.detach()


@dataclass(frozen=True)
class ScaleHeadsAndShift(Intervention):
    """Test-only intervention using intervention points (b) and (c)."""

    name = "test_scale"
    layer: int = 1
    head: int = 2

    def plan(self, spec):
        return InterventionPlan(
            head_outputs={self.layer: [HeadOutputEdit(fn=lambda ctx, x: x * 3.0, heads=(self.head,))]},
            hidden_states={self.layer + 1: [HiddenStateEdit(fn=lambda layer, state, h: h + 1.0)]},
        )


def test_head_output_edit_scales_exactly_one_head():
    model, processor = tiny_llava()
    spec = lg.adapter_for(model).spec
    seen = []
    o_proj = lg.adapter_for(model).o_proj(1)
    handle = o_proj.register_forward_hook(lambda m, a, out: seen.append(a[0].detach().clone()))
    guard = lg.attach(model, processor, [ScaleHeadsAndShift(layer=1, head=2)])
    inputs = guard.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        model(**inputs)
        with guard.disabled():
            model(**inputs)
    handle.remove()
    guard.detach()
    on, off = (x.view(*x.shape[:-1], spec.num_heads, spec.head_dim) for x in seen)
    torch.testing.assert_close(on[..., 2, :], 3.0 * off[..., 2, :])
    others = [h for h in range(spec.num_heads) if h != 2]
    assert torch.equal(on[..., others, :], off[..., others, :])


def test_hidden_state_edit_adds_exactly_one():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [ScaleHeadsAndShift(layer=0, head=0)])
    layer_out = []
    handle = guard.adapter.decoder_layers[1].register_forward_hook(
        lambda m, a, out: layer_out.append(out.detach().clone()), prepend=True
    )
    inputs = guard.prepare(IMAGES, PROMPTS)
    with guard.tap(hidden_layers=[2]) as taps, torch.no_grad():
        model(**inputs)
    handle.remove()
    guard.detach()
    torch.testing.assert_close(taps.hidden_states[2][0], layer_out[0] + 1.0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("fused", ["off", "reference"])
def test_cached_generation_equals_full_recomputation_without_cache(fused):
    """Decoding steps (SDPA with a bias, or the fused FlexAttention kernel) vs recomputed rows."""
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.8, gamma=None)], paths=lg.FastPaths(score_mods=fused))
    inputs = guard.prepare(IMAGES, PROMPTS)
    steps = 5
    with torch.no_grad():
        assert_cached_equals_recomputation(model, inputs, steps)
    guard.detach()


def test_a_batch_equals_its_samples_one_by_one():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.8, gamma=None)])
    batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=6)
    single = [guard.generate([img], [p], max_new_tokens=6) for img, p in zip(IMAGES, PROMPTS)]
    assert batch.token_ids == [s.token_ids[0] for s in single]
    guard.detach()


def test_static_cache_generation_matches_dynamic_cache():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.8, gamma=None)])
    dynamic = guard.generate(IMAGES, PROMPTS, max_new_tokens=5)
    static = guard.generate(IMAGES, PROMPTS, max_new_tokens=5, cache_implementation="static")
    assert static.token_ids == dynamic.token_ids
    guard.detach()


def test_pai_contrastive_branch_runs_and_changes_scores():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.0, gamma=3.0)])
    inputs = guard.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        on = model.generate(
            **inputs,
            max_new_tokens=3,
            do_sample=False,
            logits_processor=guard.logits_processors(PROMPTS),
            output_scores=True,
            return_dict_in_generate=True,
        )
        with guard.disabled():
            off = model.generate(
                **inputs, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
    assert not torch.allclose(on.scores[0], torch.log_softmax(off.scores[0], -1))
    guard.detach()


def test_contrast_formula_matches_hand_computation():
    from lvlm_guard.methods.pai.contrastive import contrast_log_probs

    cond = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    uncond = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25]]))
    out = contrast_log_probs(cond, uncond, gamma=2.0, plausibility=0.1)
    expected = 2.0 * (cond - uncond) + uncond
    assert torch.isinf(out[0, 2]) and torch.isinf(out[0, 3])  # 0.05 < 0.1 * 0.6
    torch.testing.assert_close(out[0, :2], expected[0, :2])


def test_taps_from_generate():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [])
    out = guard.generate(IMAGES, PROMPTS, max_new_tokens=3, taps=True)
    n = guard.adapter.spec.num_layers
    assert sorted(out.taps.attention) == list(range(n)) and sorted(out.taps.hidden_states) == list(range(n + 1))
    a = out.taps.attention[0][0]
    assert a.shape[:2] == (2, guard.adapter.spec.num_heads)
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    guard.detach()
