"""VAR: the fused redistribution against the official rule in float64 (logic.py), sink skipping (a
layer without visual sinks is left alone), the last-layer option, sinks, and the guard end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_attention_edits import SCALING, fake_module, random_case
from test_guard import IMAGES, PROMPTS
from tiny_models import assert_cached_equals_recomputation, tiny_llava

import lvlm_guard as lg
from lvlm_guard.engine.attention import LayerAttention, stock_attention_function
from lvlm_guard.engine.state import GuardState
from lvlm_guard.methods.var import VARState, _record_sinks, redistribution_log_factors
from lvlm_guard.methods.var.sinks import massive_dims, rms_normalized, sink_dims_for, sink_scores
from lvlm_guard.models import ModelSpec

B, H, KV, D = 2, 4, 2, 8


def official_redistribution(probs, image, sinks, p, rho, summ):
    """The official rule, literally, in float64: a sequence whose layer has no sink inside the image
    is left alone (logic.py:125,140-141); else scale sinks by p, give the freed mass to the
    non-sink image tokens in proportion to their weights, in the selected rows only."""
    out = probs.clone()
    b, h, r, _ = probs.shape
    selected_rows = 0
    for i in range(b):
        if not (image[i] & sinks[i]).any():
            continue
        non_sink_image = image[i] & ~sinks[i]
        for j in range(h):
            for t in range(r):
                row = probs[i, j, t]
                image_mass = row[image[i]].sum()
                portion = row[image[i] & sinks[i]].sum() / image_mass
                if not (portion <= rho and image_mass >= summ and row[non_sink_image].sum() > 0):
                    continue
                selected_rows += 1
                new = row.clone()
                budget = (1 - p) * row[sinks[i]].sum()
                new[sinks[i]] = row[sinks[i]] * p
                new[non_sink_image] += budget * row[non_sink_image] / row[non_sink_image].sum()
                out[i, j, t] = new
    return out, selected_rows


def planted_case(q_len, k_len, seed=0):
    """Random q/k/v with a strong text sink (key 0), a visual sink (key 3) and an image span 2..8."""
    torch.manual_seed(seed)
    q, k, v, _ = random_case(q_len, k_len)
    k[:, :, 0] += 1.5 * q.mean((1, 2))[:, None]
    k[:, :, 3] += 1.0 * q.mean((1, 2))[:, None]
    image = torch.zeros(B, k_len, dtype=torch.bool)
    image[:, 2:9] = True
    sinks = torch.zeros(B, k_len, dtype=torch.bool)
    sinks[:, [0, 3]] = True
    sinks[1, 5] = True
    return q, k, v, image, sinks


def test_log_factors_reproduce_the_official_rule_and_keep_rows_normalised():
    torch.manual_seed(1)
    probs = torch.softmax(torch.randn(B, H, 3, 12, dtype=torch.float64) * 2, -1)
    image = torch.zeros(B, 12, dtype=torch.bool)
    image[:, 2:9] = True
    sinks = torch.zeros(B, 12, dtype=torch.bool)
    sinks[:, [0, 4]] = True
    ref, selected = official_redistribution(probs, image, sinks, p=0.6, rho=0.5, summ=0.2)
    assert 0 < selected < B * H * 3  # both kinds of rows occur
    fused = torch.softmax(probs.log() + redistribution_log_factors(probs, image, sinks, 0.6, 0.5, 0.2), -1)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.sum(-1), torch.ones(B, H, 3, dtype=torch.float64))


def test_a_sequence_without_visual_sinks_is_left_alone_even_with_text_sinks():
    """V1: text sinks alone (BOS) select nothing; the other sequence, with a visual sink, is edited."""
    torch.manual_seed(2)
    probs = torch.softmax(torch.randn(B, H, 3, 12, dtype=torch.float64) * 2, -1)
    image = torch.zeros(B, 12, dtype=torch.bool)
    image[:, 2:9] = True
    sinks = torch.zeros(B, 12, dtype=torch.bool)
    sinks[:, 0] = True  # a text sink in both sequences
    sinks[0, 4] = True  # a visual sink in sequence 0 only
    factors = redistribution_log_factors(probs, image, sinks, 0.6, 1.0, 0.0)  # rho 1, summ 0: every row qualifies
    assert torch.equal(factors[1], torch.zeros_like(factors[1]))  # exactly zero: the plain softmax
    assert (factors[0] != 0).any()
    ref, selected = official_redistribution(probs, image, sinks, p=0.6, rho=1.0, summ=0.0)
    assert selected == H * 3  # every row of sequence 0, none of sequence 1
    assert torch.equal(ref[1], probs[1])
    fused = torch.softmax(probs.log() + factors, -1)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    logits = torch.randn(B, H, 3, 12, dtype=torch.float64)
    assert torch.equal(torch.softmax(logits + factors, -1)[1], torch.softmax(logits, -1)[1])


def test_recorded_sinks_drop_every_sink_of_a_sequence_without_visual_sinks():
    """What the fused decoding kernel reads: no sinks at all where the layer has no visual sink."""
    b, n, dim = 2, 10, 16
    hidden = torch.randn(b, n, dim) * 0.1
    hidden[:, 0, 3] = 50.0  # BOS-like text sink in both sequences
    hidden[0, 5, 3] = 50.0  # a visual sink in sequence 0
    image = torch.zeros(b, n, dtype=torch.bool)
    image[:, 4:8] = True
    state = GuardState(image_keys=image, prompt_ids=torch.zeros(b, n, dtype=torch.long))
    state.slot(VARState).sink_dims = (3, 11)
    cfg = lg.VAR(tau=3.0)  # |RMSNorm(h)| of a lone 50 among 16 small dims is about 4
    _record_sinks(cfg, (2, 3), 2, 1, state, hidden)
    found = state.slot(VARState).sinks[2]
    assert found[0].tolist() == [i in (0, 5) for i in range(n)]
    assert not found[1].any()


def test_a_layer_without_visual_sinks_equals_plain_attention():
    """Through the layer's attention function: edits on, sinks only outside the image -> the plain output."""
    q_len, k_len = 6, 12
    q, k, v, image, _ = planted_case(q_len, k_len)
    text_sinks = torch.zeros(B, k_len, dtype=torch.bool)
    text_sinks[:, [0, 1]] = True  # strong text sink at key 0 (planted), none inside the image
    cfg = lg.VAR(start_layer=1, end_layer=2, rho=1.0, summ=0.0)
    (edit,) = cfg.plan(ModelSpec(3, H, KV, D, H * D)).attention[1]
    state = GuardState(image_keys=image, prompt_ids=torch.zeros(B, k_len, dtype=torch.long))
    state.query_offset = k_len - q_len
    causal = torch.arange(k_len)[None, :] <= (torch.arange(q_len) + k_len - q_len)[:, None]
    mask = causal[None, None].expand(B, 1, q_len, k_len)
    module = fake_module(H // KV)
    stock = stock_attention_function(module)
    plain, _ = stock(module, q, k, v, mask, scaling=SCALING)
    outs = {}
    for name, sinks in (
        ("text sinks only", text_sinks),
        ("with a visual sink", text_sinks | image & (torch.arange(k_len) == 3)),
    ):
        state.slot(VARState).sinks = {1: sinks}
        outs[name], _ = LayerAttention(1, [edit], state, H)(module, q, k, v, mask, stock, scaling=SCALING)
    assert torch.equal(outs["text sinks only"], plain)  # CPU: SDPA with a zero bias, bit for bit
    assert not torch.allclose(outs["with a visual sink"], plain, rtol=0, atol=1e-4)


def test_last_layer_option_follows_the_yml_by_default_and_the_stored_code_on_request():
    spec = ModelSpec(32, H, KV, D, H * D)
    assert lg.VAR().layers(spec) == tuple(range(2, 31))  # lv1.5_7b.yml:18 except_last_layer: 1
    assert lg.VAR(last_layer=True).layers(spec) == tuple(range(2, 32))  # logic.py:148's shadowing False
    assert lg.VAR(last_layer=True, end_layer=20).layers(spec) == tuple(range(2, 20))  # explicit end wins
    plan = lg.VAR(last_layer=True).plan(spec)
    assert 31 in plan.attention and 30 in plan.hidden_states  # sinks of layer 31 read from layer 30's output
    assert 31 not in lg.VAR().plan(spec).attention
    (var,) = lg.parse_guard_spec("var:last_layer=true")
    assert var.last_layer is True


def test_last_layer_true_edits_the_last_layer_of_a_model():
    model, processor = tiny_llava()
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    logits, edited_layers = {}, {}
    for last in (False, True):
        guard = lg.attach(model, processor, [dataclasses.replace(_sinky_var(model), last_layer=last)])
        with torch.no_grad():
            logits[last] = model(**inputs).logits[:, -1]
        sinks = guard.state.slot(VARState).sinks
        edited_layers[last] = [
            layer for layer in range(4) if guard.adapter.attention(layer)._lvlm_guard_attention.edits
        ]
        guard.detach()
        assert (3 in sinks) is last
    assert edited_layers == {False: [1, 2], True: [1, 2, 3]}
    assert not torch.allclose(logits[False], logits[True])


@pytest.mark.parametrize("q_len", [1, 6])
def test_var_edit_through_sdpa_equals_float64_reference(q_len):
    """The layer's fused output equals (official redistribution of softmax) @ v, on the edited rows."""
    k_len = 12
    q, k, v, image, sinks = planted_case(q_len, k_len)
    cfg = lg.VAR(start_layer=1, end_layer=2)
    (edit,) = cfg.plan(ModelSpec(3, H, KV, D, H * D)).attention[1]
    state = GuardState(image_keys=image, prompt_ids=torch.zeros(B, k_len - q_len + 1, dtype=torch.long))
    state.query_offset = k_len - q_len
    state.slot(VARState).sinks = {1: sinks}
    offset = k_len - q_len
    causal = torch.arange(k_len)[None, :] <= (torch.arange(q_len) + offset)[:, None]
    mask = causal[None, None].expand(B, 1, q_len, k_len)  # a cache of `offset` tokens, then the queries
    module = fake_module(H // KV)
    out, _ = LayerAttention(1, [edit], state, H)(
        module, q, k, v, mask, stock_attention_function(module), scaling=SCALING
    )

    kr, vr = k.double().repeat_interleave(H // KV, 1), v.double().repeat_interleave(H // KV, 1)
    logits = q.double() @ kr.transpose(-1, -2) * SCALING
    probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1)
    new, selected = official_redistribution(probs, image, sinks, cfg.p, cfg.rho, cfg.summ)
    after_image = (torch.arange(q_len) + offset) > 8  # rows after the image's last token
    new = torch.where(after_image[None, None, :, None], new, probs)
    assert selected > 0
    ref = (new @ vr).transpose(1, 2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    if q_len > 1:  # rows up to the image are untouched
        torch.testing.assert_close(
            out.double()[:, ~after_image], (probs @ vr).transpose(1, 2)[:, ~after_image], rtol=1e-5, atol=1e-5
        )


def test_sink_scores_and_dimension_discovery():
    hidden = torch.randn(2, 5, 16)
    hidden[0, 0, [3, 11]] = torch.tensor([300.0, -250.0])
    scores = sink_scores(hidden, (3, 11))
    expected = rms_normalized(hidden)[..., [3, 11]].abs().amax(-1)
    torch.testing.assert_close(scores, expected)
    assert scores[0, 0] > 3 > scores[1].max()
    assert massive_dims([hidden[0, 0], hidden[0, 0] * 0.5], 2) == (3, 11)


def test_var_without_sinks_changes_nothing_and_detach_restores():
    model, processor = tiny_llava()
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        plain = model(**inputs).logits
        guard = lg.attach(model, processor, [lg.VAR(tau=1e9)])  # no token reaches tau
        dims = guard.state.slot(VARState).sink_dims
        assert len(dims) == 2 and all(0 <= d < model.config.text_config.hidden_size for d in dims)
        guarded = model(**inputs).logits
        assert not guard.state.slot(VARState).sinks[2].any()
        guard.detach()
        after = model(**inputs).logits
    # the edited rows are recomputed through SDPA with a zero bias: equal up to rounding, on real tokens
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(guarded[real], plain[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(plain, after)


def _sinky_var(model) -> lg.VAR:
    """A VAR whose tau puts a few prompt tokens per layer over the threshold of this random model."""
    text_config = model.config.text_config
    dims = sink_dims_for(model.model.language_model, text_config, text_config.bos_token_id, range(1, 3))
    return lg.VAR(tau=2.0, sink_dims=dims, start_layer=1, rho=1.0, summ=0.0)


def test_var_changes_logits_and_cached_generation_equals_recomputation():
    model, processor = tiny_llava()
    var = _sinky_var(model)
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        plain = model(**inputs).logits[:, -1]
    guard = lg.attach(model, processor, [var])
    steps = 4
    with torch.no_grad():
        guarded = model(**inputs).logits[:, -1]
        found = guard.state.slot(VARState).sinks
        assert any(s.any() and not s.all() for s in found.values()), "the test needs some sinks"
        assert not torch.allclose(plain, guarded)
        assert_cached_equals_recomputation(model, inputs, steps)
    guard.detach()


def test_var_batch_equals_one_by_one_and_composes_with_pai():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [_sinky_var(model), lg.PAI(alpha=0.5, gamma=None)])
    batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=5)
    single = [guard.generate([img], [p], max_new_tokens=5) for img, p in zip(IMAGES, PROMPTS)]
    assert batch.token_ids == [s.token_ids[0] for s in single]
    guard.detach()


def test_var_rejects_bad_settings():
    with pytest.raises(lg.InterventionConfigError, match="p must be"):
        lg.VAR(p=1.5)
    with pytest.raises(lg.InterventionConfigError, match="layers"):
        lg.VAR(start_layer=1, end_layer=99).plan(ModelSpec(4, H, KV, D, H * D))
    with pytest.raises(lg.InterventionConfigError, match="sink_dims"):
        lg.VAR(sink_dims=(5000,)).plan(ModelSpec(4, H, KV, D, H * D))


def test_image_ends_are_right_under_left_padding_and_computed_once_per_prompt(monkeypatch):
    """Every edited layer of a prefill asks where the images end; the answer (and its host sync)
    is computed once per prompt, and it matches the image mask slot by slot."""
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [_sinky_var(model)])
    inputs = guard.prepare(IMAGES, PROMPTS)  # mixed prompt lengths: left padding
    computed = []
    ends = GuardState._ends

    def counted(state):
        if state._image_ends is None:
            computed.append(1)
        return ends(state)

    monkeypatch.setattr(GuardState, "_ends", counted)
    with torch.no_grad():
        model(**inputs)
    keys = guard.state.image_keys
    last, first_after = guard.state.last_image_slots(), guard.state.first_slot_after_all_images()
    guard.detach()
    assert len(computed) == 1
    expected = torch.stack([keys[row].nonzero().max() for row in range(keys.shape[0])])
    assert torch.equal(last, expected)
    assert first_after == int(expected.min()) + 1


def test_sink_hooks_exist_only_during_multi_token_forwards():
    """VAR's sink recording is prefill work: its hooks must not be traced into decoding steps."""
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [_sinky_var(model)])
    layers = guard.adapter.decoder_layers
    hooks_per_forward = []  # registered after the guard's own pre-hook, so it sees what that set up

    def count_hooks(module, args, kwargs):  # the guard's hooks (transformers keeps hooks of its own there)
        hooks = [hook for layer in layers for hook in layer._forward_hooks.values()]
        hooks_per_forward.append(sum("Guard." in getattr(hook, "__qualname__", "") for hook in hooks))

    spy = model.register_forward_pre_hook(count_hooks, with_kwargs=True)
    out = guard.generate(IMAGES, PROMPTS, max_new_tokens=3)
    spy.remove()
    assert len(hooks_per_forward) == 3  # the prefill and two decoding steps
    assert hooks_per_forward[0] == len(_sinky_var(model).layers(guard.adapter.spec))
    assert hooks_per_forward[1:] == [0, 0]
    assert all(len(ids) == 3 for ids in out.token_ids)
    guard.detach()
