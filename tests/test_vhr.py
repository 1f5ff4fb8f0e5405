"""VHR: head selection (Eq. 6-7) against a float64 reading of the paper, the layer rule (Sec. 4.4),
the reinforcement's exact reach and presets (the shared guarantees: tests/test_contract.py)."""

from __future__ import annotations

import statistics

import pytest
import torch
from contract import IMAGES as FAMILY_IMAGES
from contract import PROMPTS as FAMILY_PROMPTS
from test_guard import IMAGES, PROMPTS
from tiny_families import FAMILIES, LAYERS
from tiny_models import assert_cached_equals_recomputation, tiny_llava

import lvlm_guard as lg
from lvlm_guard.engine.edits import HeadOutputs
from lvlm_guard.engine.state import GuardState
from lvlm_guard.methods.vhr import (
    VHRState,
    _left_packed,
    _reinforce,
    reinforced_layers,
    vision_aware_heads,
)
from lvlm_guard.models import ModelSpec


def paper_heads(vhd: list[float], ta: list[float]) -> list[bool]:
    """Eq. 6-7 of one layer, literally, in Python floats: zero VHD_i where VHD_i > mu + sigma AND
    TA_i > mu + sigma (sample std), then H = {i : VHD_i > median of all VHD}."""
    vhd_limit = statistics.mean(vhd) + statistics.stdev(vhd)
    ta_limit = statistics.mean(ta) + statistics.stdev(ta)
    scored = [0.0 if v > vhd_limit and t > ta_limit else v for v, t in zip(vhd, ta)]
    median = statistics.median(scored)
    return [v > median for v in scored]


def old_rule(vhd: list[float]) -> list[bool]:
    """The rule before issue 19: drop every VHD surge, median over the kept heads only."""
    limit = statistics.mean(vhd) + statistics.stdev(vhd)
    kept = [v for v in vhd if v <= limit]
    median = statistics.median(kept)
    return [median < v <= limit for v in vhd]


def _heads(vhd, ta) -> list[bool]:
    out = vision_aware_heads(torch.tensor([vhd], dtype=torch.float64), torch.tensor([ta], dtype=torch.float64))
    return out[0].tolist()


def test_a_vhd_surge_alone_is_kept_and_the_median_is_over_all_heads():
    vhd = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 30.0]  # head 7 surges (mean 7.25 + std 9.3 < 30)
    calm_ta = [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.05]  # its image-free output does not: kept (Eq. 6's AND)
    want = [False, False, False, False, True, True, True, True]  # above the median of all 8 (4.5)
    assert paper_heads(vhd, calm_ta) == want
    assert _heads(vhd, calm_ta) == want
    assert old_rule(vhd) != want  # the old rule dropped head 7 and took 3 heads


def test_a_vhd_surge_with_a_ta_surge_is_zeroed_but_still_counts_for_the_median():
    vhd = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 30.0]
    surging_ta = [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 25.0]  # head 7's image-free energy surges too: zeroed
    want = [False, False, False, True, True, True, True, False]  # median of [1..7, 0] is 3.5: half the heads
    assert paper_heads(vhd, surging_ta) == want
    assert _heads(vhd, surging_ta) == want
    assert old_rule(vhd) != want  # the old median over the seven kept heads (4) left head 3 out


def test_a_ta_surge_alone_changes_nothing():
    vhd = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    ta = [40.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # head 0's image-free energy surges, its VHD does not
    assert _heads(vhd, ta) == paper_heads(vhd, ta) == [False] * 4 + [True] * 4


@pytest.mark.parametrize("seed", range(6))
def test_vision_aware_heads_match_the_float64_reference_on_random_layers(seed):
    g = torch.Generator().manual_seed(seed)
    b, h = 5, 32
    vhd = torch.rand(b, h, generator=g, dtype=torch.float64).pow(3) * 4
    ta = torch.rand(b, h, generator=g, dtype=torch.float64) * 2
    surge = torch.rand(b, h, generator=g) < 0.08  # planted surges of both kinds, some on the same head
    vhd = torch.where(surge, vhd + 20, vhd)
    ta = torch.where(torch.rand(b, h, generator=g) < 0.5, torch.where(surge, ta + 30, ta), ta)
    got = vision_aware_heads(vhd, ta)
    want = torch.tensor([paper_heads(vhd[i].tolist(), ta[i].tolist()) for i in range(b)])
    assert torch.equal(got, want)
    old = torch.tensor([old_rule(vhd[i].tolist()) for i in range(b)])
    if seed == 0:
        assert not torch.equal(got, old)  # the random layers tell the two rules apart too


def test_the_layer_rule_for_any_depth_and_the_presets():
    assert reinforced_layers(32, (1,), 14 / 32) == (1, *range(18, 32))  # Sec. 4.4: 0-based 1 and 18..31
    assert reinforced_layers(32, (), 18 / 32) == tuple(range(14, 32))  # InstructBLIP: the last 18
    assert reinforced_layers(40, (1,), 14 / 32) == (1, *range(22, 40))  # 17.5 rounds up to 18
    assert reinforced_layers(4, (1,), 14 / 32) == (1, 2, 3)
    spec32 = ModelSpec(32, 32, 32, 128, 4096)
    assert lg.VHR().layers(spec32) == (1, *range(18, 32))  # unfilled: the default preset (LLaVA's rule)
    assert lg.VHR(preset="paper_instructblip").layers(spec32) == tuple(range(14, 32))
    assert lg.VHR(early_layers=(), last_share=0.25).layers(spec32) == tuple(range(24, 32))
    (vhr,) = lg.parse_guard_spec("vhr:explicit_layers=3;5")
    assert vhr.layers(spec32) == (3, 5)
    assert set(vhr.plan(spec32).head_outputs) == {3, 5}
    assert lg.parse_guard_spec("vhr:early_layers=2")[0].early_layers == (2,)
    filled = lg.VHR().for_family("llava_next")
    assert (filled.early_layers, filled.last_share) == ((1,), 14 / 32)
    with pytest.raises(lg.InterventionConfigError, match="preset"):
        lg.VHR(preset="nope")
    with pytest.raises(lg.InterventionConfigError, match="prompt_rows"):
        lg.VHR(prompt_rows="some")
    with pytest.raises(lg.InterventionConfigError, match="layers"):
        lg.VHR(explicit_layers=(40,)).layers(spec32)


@pytest.mark.parametrize("prompt_rows", ["all", "last"])
def test_reinforce_measures_at_the_last_prompt_row_and_scales_the_chosen_rows(prompt_rows):
    torch.manual_seed(0)
    b, q, h, d = 2, 5, 8, 4
    heads = torch.randn(b, q, h, d, dtype=torch.float64)
    image_free = torch.randn(b, h, d, dtype=torch.float64)
    image_free[0, 3] *= 8  # a head whose image-free output surges
    state = GuardState(prompt_ids=torch.zeros(b, 5, dtype=torch.long))
    state.slot(VHRState).image_free = {3: image_free}
    cfg = lg.VHR(alpha=2.5, prompt_rows=prompt_rows, explicit_layers=(3,))
    out = _reinforce(cfg, (3,), HeadOutputs(layer=3, state=state), heads)
    divergence = (heads[:, -1] - image_free).norm(dim=-1)
    torch.testing.assert_close(state.slot(VHRState).divergence[3].double(), divergence, rtol=1e-6, atol=1e-6)  # float32
    energy = image_free.square().sum(-1)
    selected = torch.tensor([paper_heads(divergence[i].tolist(), energy[i].tolist()) for i in range(b)])
    assert torch.equal(vision_aware_heads(state.slot(VHRState).divergence[3], energy.float()), selected)
    assert (selected.sum(-1) == h // 2).all()
    rows = slice(None) if prompt_rows == "all" else slice(-1, None)
    expected = heads.clone()
    expected[:, rows] = torch.where(selected[:, None, :, None], 2.5 * heads[:, rows], heads[:, rows])
    torch.testing.assert_close(out, expected)
    step = torch.randn(b, 1, h, d, dtype=torch.float64)  # a decoding step reuses the t = 0 selection
    torch.testing.assert_close(
        _reinforce(cfg, (3,), HeadOutputs(layer=3, state=state), step),
        torch.where(selected[:, None, :, None], 2.5 * step, step),
    )


def test_alpha_one_is_the_plain_model_and_vhr_reaches_exactly_its_rows_and_layers():
    model, processor = tiny_llava()
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        plain = model(**inputs).logits
        guard = lg.attach(model, processor, [lg.VHR(alpha=1.0)])
        same = model(**inputs).logits
        guard.detach()
        guard = lg.attach(model, processor, [lg.VHR(prompt_rows="last")])
        last_only = model(**inputs).logits
        guard.detach()
        guard = lg.attach(model, processor, [lg.VHR()])
        reinforced = model(**inputs).logits
        (filled,) = guard.interventions
        scales = guard.state.slot(VHRState).scales
        guard.detach()
    assert torch.equal(plain, same)
    assert torch.equal(plain[:, :-1], last_only[:, :-1])  # "last": rows before the generating one untouched
    assert not torch.allclose(plain[:, -1], last_only[:, -1])
    assert not torch.allclose(plain[:, :-1][real[:, :-1]], reinforced[:, :-1][real[:, :-1]])  # "all": prompt rows too
    assert filled.early_layers == (1,) and filled.last_share == 14 / 32  # the llava family's preset
    assert list(scales) == [1, 2, 3]  # 4 layers: the second and the last round(1.75) = 2
    picked = torch.stack(scales.values()).flatten(2) == 2.0  # [layers, b, h]
    assert picked.any() and (picked.sum(-1) <= model.config.text_config.num_attention_heads // 2).all()


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
    assert len(guard.adapter.attention(1)._lvlm_guard_attention.head_edits) == 1
    assert not guard.adapter.attention(0)._lvlm_guard_attention.head_edits  # layer 0 is not reinforced
    guard.detach()


# --- every family -----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request):
    return FAMILIES[request.param]()


def test_vhr_reinforces_the_rule_layers_on_every_family(family_model):
    """The shared guarantees are in tests/test_contract.py; here: the layers VHR edits on each family."""
    model, processor = family_model
    guard = lg.attach(model, processor, [lg.VHR()])
    try:
        guard.generate(FAMILY_IMAGES, FAMILY_PROMPTS, max_new_tokens=1)
        assert list(guard.state.slot(VHRState).scales) == [1, 2, 3] and LAYERS == 4
    finally:
        guard.detach()
