"""PAINT (arXiv 2501.12206; hasanar1f/PAINT modPAI/): the token rule against a float64 reading of the
official clip_encoder.py, the CLS attention against a float64 eager tower's attentions, the edit
against float64 `s + a|s|` on exactly the informed columns of the last row, and the guard end to end."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from test_attention_edits import SCALING, causal, fake_module
from test_guard import IMAGES, PROMPTS
from tiny_families import FAMILIES
from tiny_models import assert_cached_equals_recomputation, tiny_llava

import lvlm_guard as lg
from lvlm_guard.engine.attention import LayerAttention, stock_attention_function
from lvlm_guard.engine.guard import MODEL_ATTR
from lvlm_guard.engine.state import GuardState
from lvlm_guard.errors import ClsAttentionUnavailableError
from lvlm_guard.methods.base import method_class
from lvlm_guard.methods.paint import InformedTokens, PaintState, informed_tokens, iqr_outliers, top_share
from lvlm_guard.models import ModelSpec

B, H, KV, D = 2, 4, 2, 8


def official_token_sets(top_attn: np.ndarray, bottom_attn: np.ndarray, local_ratio: float = 0.25):
    """clip_encoder.py:16-59 in float64 numpy for one image: top-k of layer 0's head-summed CLS
    attention, the IQR outlier count of the second-to-last layer's, top-k of that count, set difference."""
    n = top_attn.shape[0]
    top = set(np.argsort(-top_attn, kind="stable")[: int(n * local_ratio)].tolist())
    q1, q3 = np.percentile(bottom_attn, 25), np.percentile(bottom_attn, 75)
    ratio = len(np.where(bottom_attn > q3 + 1.5 * (q3 - q1))[0]) / n
    bottom = set(np.argsort(-bottom_attn, kind="stable")[: int(n * ratio)].tolist())
    return top - bottom, bottom


def as_sets(mask: torch.Tensor) -> list[set[int]]:
    return [set(row.nonzero().flatten().tolist()) for row in mask]


def tiny_paint_llava(**kw):
    """A tiny LLaVA whose CLIP tower has 3 layers (layer 0 and the second-to-last differ) and 64 patches."""
    return tiny_llava(vision_layers=3, image_size=32, patch_size=4, **kw)


# --- the token rule ------------------------------------------------------------------------------
@pytest.mark.parametrize("patches", [576, 64])
def test_token_sets_equal_the_official_rule_in_float64(patches):
    rng = np.random.default_rng(patches)
    local_attn = rng.gamma(2.0, 1.0, (5, patches))
    summary_attn = rng.gamma(2.0, 1.0, (5, patches))
    summary_attn[:, rng.choice(patches, 6, replace=False)] += 30.0  # planted summary tokens (sinks)
    local_attn[0, :] = summary_attn[0, :]  # an image whose local and summary candidates overlap
    local, summary = informed_tokens(torch.tensor(local_attn), torch.tensor(summary_attn), 0.25, 1.5)
    for i in range(5):
        want_local, want_summary = official_token_sets(local_attn[i], summary_attn[i])
        assert as_sets(local)[i] == want_local and as_sets(summary)[i] == want_summary
        assert len(want_summary) >= 6 and not (want_local & want_summary)
    assert len(as_sets(local)[0]) < int(patches * 0.25)  # the overlap left the local set


def test_top_share_and_outliers_edge_cases():
    values = torch.arange(16.0)[None]
    assert as_sets(top_share(values, 0.25)) == [{12, 13, 14, 15}]
    assert not top_share(values, 0.0).any() and top_share(values, 1.0).all()
    assert not iqr_outliers(values).any()  # a uniform ramp has no outliers
    values[0, 3] = 100.0
    assert as_sets(iqr_outliers(values)) == [{3}]


# --- the CLS attention, read by a hook, against the tower's own attentions -----------------------------
def eager_tower_attentions(model, pixel_values):
    """The official source: `vision_tower(..., output_attentions=True).attentions`, in float64 eager."""
    tower = copy.deepcopy(model.model.vision_tower).double()
    tower.config._attn_implementation = "eager"
    with torch.no_grad():
        return tower(pixel_values.double(), output_attentions=True).attentions


def test_cls_attention_sets_and_margins_equal_the_float64_official_readout():
    model, processor = tiny_paint_llava()
    guard = lg.attach(model, processor, [lg.PAINT(alpha=0.7, beta=0.4)])
    try:
        inputs = guard.prepare(IMAGES, PROMPTS)  # 3 images: one in the first prompt, two in the second
        with torch.no_grad():
            model(**inputs)
        tokens: InformedTokens = guard.state.slot(PaintState).tokens
        attentions = eager_tower_attentions(model, inputs["pixel_values"])
        patches = 64
        first = attentions[0][:, :, 0, -patches:].sum(1)  # clip_encoder.py:38, for every image
        second_to_last = attentions[-2][:, :, 0, -patches:].sum(1)  # :39
        torch.testing.assert_close(tokens.cls_attention[0].double(), first, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tokens.cls_attention[-2].double(), second_to_last, rtol=1e-5, atol=1e-6)
        want = [official_token_sets(first[i].numpy(), second_to_last[i].numpy()) for i in range(3)]
        assert as_sets(tokens.local) == [w[0] for w in want]
        assert as_sets(tokens.summary) == [w[1] for w in want]
        assert all(len(w[0]) >= 12 for w in want)  # 16 local minus a few summary tokens
        # margins at the image tokens: image i's patch j is the j-th token of its span
        expected = torch.zeros(inputs["input_ids"].shape, dtype=torch.float32)
        images = iter(want)
        for row, spans in enumerate(guard.adapter.image_spans(inputs["input_ids"])):
            for start, _ in spans:
                local, summary = next(images)
                for j in local:
                    expected[row, start + j] = 0.7
                for j in summary:
                    expected[row, start + j] = 0.4
        torch.testing.assert_close(tokens.margins, expected, rtol=0, atol=0)
    finally:
        guard.detach()


# --- the edit ---------------------------------------------------------------------------------------
def paint_state(image_keys, margins, prompt_len):
    tokens = InformedTokens(None, 0, -2, 0.25, 1.5, alpha=0.0, beta=0.0, margins=margins)
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, prompt_len, dtype=torch.long))
    state.slot(PaintState).tokens = tokens
    return state


@pytest.mark.parametrize("q_len, k_len", [(10, 10), (1, 12)])
def test_edit_equals_float64_s_plus_a_abs_s_on_the_informed_columns_of_the_last_row(q_len, k_len):
    torch.manual_seed(3)
    q, k, v = torch.randn(B, H, q_len, D), torch.randn(B, KV, k_len, D), torch.randn(B, KV, k_len, D)
    image_keys = torch.zeros(B, k_len, dtype=torch.bool)
    image_keys[:, 1:8] = True
    local = {0: [2, 5], 1: [1, 3, 7]}  # per sequence: cache slots of local / summary tokens
    summary = {0: [4], 1: [6]}
    margins = torch.zeros(B, 10)
    for row in range(B):
        margins[row, local[row]] = 0.7
        margins[row, summary[row]] = 0.4
    margins[0, 9] = 5.0  # a stale margin off the image: masked by the image keys, never applied
    state = paint_state(image_keys, margins, prompt_len=10)
    state.query_offset = k_len - q_len
    (edit,) = lg.PAINT(start_layer=0, end_layer=1).plan(ModelSpec(1, H, KV, D, H * D)).attention[0]
    allowed = causal(q_len, k_len, k_len - q_len)
    module = fake_module(H // KV)
    out, _ = LayerAttention(0, [edit], state, H)(
        module, q, k, v, allowed, stock_attention_function(module), scaling=SCALING
    )

    kr, vr = k.double().repeat_interleave(H // KV, 1), v.double().repeat_interleave(H // KV, 1)
    scores = q.double() @ kr.transpose(-1, -2) * SCALING
    edited = scores.clone()
    for row in range(B):
        for cols, a in ((local[row], 0.7), (summary[row], 0.4)):
            s = scores[row, :, -1, cols]
            edited[row, :, -1, cols] = s + a * s.abs()  # modPAI/attention.py:140-147
    assert not torch.equal(edited, scores)
    probs = torch.softmax(edited.masked_fill(~allowed, float("-inf")), -1)
    torch.testing.assert_close(out.double(), (probs @ vr).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_plan_covers_layers_two_to_the_last_all_heads_generating_rows():
    spec = ModelSpec(6, H, KV, D, H * D)
    plan = lg.PAINT().plan(spec)
    assert sorted(plan.attention) == [2, 3, 4, 5]  # chair_eval.py:57-58, attention.py:189
    for edits in plan.attention.values():
        (edit,) = edits
        assert edit.heads is None and edit.rows == "generating" and edit.decode_kernel is None
    assert lg.PAINT(alpha=0, beta=0).plan(spec).attention == {}
    assert sorted(lg.PAINT(start_layer=1, end_layer=3).plan(spec).attention) == [1, 2]


# --- the guard end to end -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava():
    return tiny_paint_llava()


def forward(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True, **kw)


def test_guard_changes_only_the_last_row_from_layer_two_on_and_detach_restores(llava):
    model, processor = llava
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    plain = forward(model, inputs)
    guard = lg.attach(model, processor, [lg.PAINT(alpha=2.0, beta=1.0)])
    try:
        guarded = forward(model, inputs)
        for index in range(3):  # inputs of layers 0..2: untouched (layers 0 and 1 are not edited)
            assert torch.equal(guarded.hidden_states[index], plain.hidden_states[index])
        assert not torch.allclose(guarded.hidden_states[3][:, -1], plain.hidden_states[3][:, -1])
        assert torch.equal(guarded.logits[:, :-1], plain.logits[:, :-1])  # only the generating row moves
        assert not torch.allclose(guarded.logits[:, -1], plain.logits[:, -1])
        with torch.no_grad():
            assert_cached_equals_recomputation(model, inputs, 3)
        # a text-only prompt after an image prompt: the old margins never reach it
        text = guard.prepare([None, None], PROMPTS)
        with guard.disabled():
            text_plain = forward(model, text).logits
        torch.testing.assert_close(forward(model, text).logits, text_plain, rtol=1e-5, atol=1e-5)  # recomputed row
        assert not guard.state.slot(PaintState).tokens.weights(guard.state, guard.state.image_keys, torch.float32, 1.0).any()
    finally:
        guard.detach()
    assert torch.equal(forward(model, inputs).logits, plain.logits)


def test_no_informed_tokens_equals_plain(llava):
    model, processor = llava
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    plain = forward(model, inputs).logits
    guard = lg.attach(model, processor, [lg.PAINT(local_ratio=0.0, whisker=1e9)])  # both sets empty
    try:
        # the generating row is recomputed (SDPA with a zero bias): equal up to float32 rounding
        torch.testing.assert_close(forward(model, inputs).logits, plain, rtol=1e-5, atol=1e-5)
        assert not guard.state.slot(PaintState).tokens.margins.any()
    finally:
        guard.detach()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("fused", ["off", "reference"])
def test_generation_batch_equals_one_by_one_and_decoding_paths_agree(llava, fused):
    model, processor = llava
    guard = lg.attach(model, processor, [lg.PAINT(alpha=2.0, beta=1.0)], paths=lg.FastPaths(score_mods=fused))
    try:
        batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=4)
        single = [guard.generate([img], [p], max_new_tokens=4) for img, p in zip(IMAGES, PROMPTS)]
        assert batch.token_ids == [s.token_ids[0] for s in single]
        inputs = guard.prepare(IMAGES, PROMPTS)
        with torch.no_grad():
            assert_cached_equals_recomputation(model, inputs, 3)
        static = guard.generate(IMAGES, PROMPTS, max_new_tokens=4, cache_implementation="static")
        assert static.token_ids == batch.token_ids
    finally:
        guard.detach()


def test_composes_with_pai_and_cfg_runs(llava):
    model, processor = llava
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    pai = lg.PAI(alpha=0.5, gamma=None)
    guard = lg.attach(model, processor, [pai])
    try:
        alone = forward(model, inputs).logits[:, -1]
    finally:
        guard.detach()
    guard = lg.attach(model, processor, [pai, lg.PAINT(alpha=2.0, beta=1.0, gamma=1.1)])
    try:
        assert not torch.allclose(forward(model, inputs).logits[:, -1], alone)
        (contrast,) = guard.logits_processors(PROMPTS)
        assert guard.generate(IMAGES, PROMPTS, max_new_tokens=2).token_ids
    finally:
        guard.detach()


# --- names, presets, settings, families ------------------------------------------------------------
def test_iaf_is_a_deprecated_alias_of_paint():
    assert "paint" in lg.available_methods() and "iaf" not in lg.available_methods()
    with pytest.warns(DeprecationWarning, match="'iaf' is deprecated; use 'paint'"):
        (old,) = lg.parse_guard_spec("iaf:beta=0.3")
    assert old == lg.PAINT(beta=0.3) and lg.IAF is lg.PAINT
    with pytest.warns(DeprecationWarning):
        assert method_class("iaf") is lg.PAINT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (new,) = lg.parse_guard_spec("paint:alpha=0.5:local_ratio=0.2")
    assert new == lg.PAINT(alpha=0.5, local_ratio=0.2)


def test_beta_presets_paper_by_default_code_by_name():
    assert lg.PAINT().for_family("llava").beta == 0.4  # the paper's tables
    assert lg.PAINT(preset="code").for_family("llava").beta == 0.3  # chair_eval.py:52
    assert lg.PAINT(preset="code", beta=0.5).for_family("llava").beta == 0.5
    (code,) = lg.parse_guard_spec("paint:preset=code")
    assert code.for_family(None).beta == 0.3 and lg.PAINT().alpha == 0.7


def test_bad_settings_are_named():
    for kwargs, field in (({"alpha": -1}, "alpha"), ({"beta": -0.1}, "beta"), ({"local_ratio": 1.5}, "local_ratio"),
                          ({"whisker": -1}, "whisker"), ({"gamma": 0}, "gamma"), ({"preset": "paper2"}, "preset")):  # fmt: skip
        with pytest.raises(lg.InterventionConfigError, match=field):
            lg.PAINT(**kwargs)
    with pytest.raises(lg.InterventionConfigError, match="layer"):
        lg.PAINT(end_layer=99).plan(ModelSpec(4, H, KV, D, H * D))
    model, processor = tiny_paint_llava()
    with pytest.raises(ClsAttentionUnavailableError, match="vision layers"):
        lg.attach(model, processor, [lg.PAINT(summary_vit_layer=7)])
    assert getattr(model, MODEL_ATTR, None) is None


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "llava_next"])
def test_families_without_a_usable_cls_token_raise_a_named_error(family):
    model, processor = FAMILIES[family]()
    attn = model.config.get_text_config()._attn_implementation
    with pytest.raises(ClsAttentionUnavailableError, match=family) as error:
        lg.attach(model, processor, [lg.PAINT()])
    assert "CLS" in str(error.value)
    assert getattr(model, MODEL_ATTR, None) is None  # the failed attach left nothing behind
    assert model.config.get_text_config()._attn_implementation == attn
    assert isinstance(error.value, lg.InterventionConfigError)
