"""VHR: head selection against hand computation, the reinforcement's exact reach, cache invariance."""

from __future__ import annotations

import pytest
import torch
from test_guard import IMAGES, PROMPTS
from tiny_models import assert_cached_equals_recomputation, tiny_llava

import lvlm_guard as lg
from lvlm_guard.edits import HeadOutputs
from lvlm_guard.methods.vhr import NO_IMAGE, SCALE, VHD, _left_packed, _reinforce, vision_aware_heads
from lvlm_guard.state import GuardState


def test_vision_aware_heads_drop_surges_then_take_those_above_the_median():
    divergence = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 30.0]], dtype=torch.float64)
    # mean 7.25, std ~9.3: 30 is a surge; the median of the other seven is 4 -> heads 5, 6, 7 (values 5, 6, 7)
    expected = torch.tensor([[False, False, False, False, True, True, True, False]])
    assert torch.equal(vision_aware_heads(divergence), expected)


def test_reinforce_measures_at_the_last_prompt_row_and_scales_generating_rows_only():
    torch.manual_seed(0)
    b, q, h, d = 2, 5, 6, 4
    heads = torch.randn(b, q, h, d, dtype=torch.float64)
    image_free = torch.randn(b, h, d, dtype=torch.float64)
    state = GuardState(prompt_ids=torch.zeros(b, 5, dtype=torch.long))
    state.scratch[NO_IMAGE] = {3: image_free}
    out = _reinforce(lg.VHR(alpha=2.5), (3,), HeadOutputs(layer=3, state=state), heads)
    divergence = (heads[:, -1] - image_free).norm(dim=-1)
    torch.testing.assert_close(state.scratch[VHD][3].double(), divergence, rtol=1e-6, atol=1e-6)  # float32
    selected = vision_aware_heads(state.scratch[VHD][3])
    expected = heads.clone()
    expected[:, -1] = torch.where(selected[..., None], 2.5 * heads[:, -1], heads[:, -1])
    torch.testing.assert_close(out, expected)
    step = torch.randn(b, 1, h, d, dtype=torch.float64)  # a decoding step reuses the selection
    torch.testing.assert_close(
        _reinforce(lg.VHR(alpha=2.5), (3,), HeadOutputs(layer=3, state=state), step),
        torch.where(selected[:, None, :, None], 2.5 * step, step),
    )


def test_alpha_one_is_the_plain_model_and_vhr_changes_only_generating_rows():
    model, processor = tiny_llava()
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        plain = model(**inputs).logits
        guard = lg.attach(model, processor, [lg.VHR(alpha=1.0)])
        same = model(**inputs).logits
        guard.detach()
        guard = lg.attach(model, processor, [lg.VHR()])
        reinforced = model(**inputs).logits
        scales = guard.state.scratch[SCALE]
        guard.detach()
    assert torch.equal(plain, same)
    assert torch.equal(plain[:, :-1], reinforced[:, :-1])  # rows before the generating one: untouched
    assert not torch.allclose(plain[:, -1], reinforced[:, -1])
    picked = torch.stack(list(scales.values())).flatten(2) == 2.0  # [layers, b, h]
    assert picked.any() and (picked.float().mean(-1) <= 0.5).all()


def test_cached_generation_equals_recomputation_and_batch_equals_single():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [lg.VHR()])
    inputs = guard.prepare(IMAGES, PROMPTS)
    steps = 4
    with torch.no_grad():
        assert_cached_equals_recomputation(model, inputs, steps)
    batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=5)
    single = [guard.generate([img], [p], max_new_tokens=5) for img, p in zip(IMAGES, PROMPTS)]
    assert batch.token_ids == [s.token_ids[0] for s in single]
    guard.detach()


def test_vhr_composes_with_var_and_pai_and_rejects_bad_settings():
    """Each part of a composition has its effect, and the composed guard keeps batch == one by one."""
    model, processor = tiny_llava()
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    specs = ["var:tau=2.0:start_layer=1:rho=1.0:summ=0.0", "vhr", "pai:gamma=none:alpha=0.5"]
    last = {}
    for spec in [*specs, ",".join(specs)]:
        guard = lg.attach(model, processor, lg.parse_guard_spec(spec))
        with torch.no_grad():
            last[spec] = model(**inputs).logits[:, -1]
        if spec == ",".join(specs):
            batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=4)
            single = [guard.generate([img], [p], max_new_tokens=4) for img, p in zip(IMAGES, PROMPTS)]
            assert batch.token_ids == [s.token_ids[0] for s in single]
        guard.detach()
    for spec in specs:
        assert not torch.allclose(last[spec], last[",".join(specs)])
    with pytest.raises(lg.InterventionConfigError, match="alpha"):
        lg.VHR(alpha=0)


@pytest.mark.parametrize("spec", ["var:tau=2.0:start_layer=1:rho=1.0:summ=0.0", "vhr", "var:tau=2.0:start_layer=1,vhr"])
def test_static_cache_generation_matches_dynamic_cache(spec):
    """The masks `generate` passes with a static cache (4-D, cache-wide) reach VAR's and VHR's hooks right."""
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, lg.parse_guard_spec(spec))
    dynamic = guard.generate(IMAGES, PROMPTS, max_new_tokens=5)
    static = guard.generate(IMAGES, PROMPTS, max_new_tokens=5, cache_implementation="static")
    assert static.token_ids == dynamic.token_ids
    guard.detach()


def test_left_packing_of_the_image_free_prompt_matches_a_row_by_row_copy():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (5, 12), generator=g)
    keep = torch.rand(5, 12, generator=g) > 0.4
    keep[0] = True  # a row that keeps everything
    keep[1] = False  # and one that keeps nothing
    packed, mask = _left_packed(ids, keep)
    width = int(keep.sum(1).max())
    assert packed.shape == mask.shape == (5, width)
    for row in range(5):
        kept = ids[row][keep[row]]
        n = kept.numel()
        assert torch.equal(packed[row, width - n :], kept)
        assert torch.equal(packed[row, : width - n], torch.zeros(width - n, dtype=ids.dtype))
        assert mask[row].tolist() == [0] * (width - n) + [1] * n


def test_head_scaling_runs_in_the_attention_function_without_module_hooks():
    """The scaling reaches the logits (above) with no hook on any `o_proj`: eager decoding pays
    for a hooked module's slow call path in every layer."""
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [lg.VHR()])
    spec = guard.adapter.spec
    assert all(not guard.adapter.o_proj(layer)._forward_pre_hooks for layer in range(spec.num_layers))
    layer_attention = guard.adapter.attention(0)._lvlm_guard_attention
    assert len(layer_attention.head_edits) == 1
    guard.detach()
