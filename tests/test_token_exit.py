"""Visual-token exit: later layers see text tokens only, exactly as a hand-built reference loop."""

from __future__ import annotations

import pytest
import torch
from test_guard import IMAGES, PROMPTS
from test_var import _sinky_var
from tiny_models import assert_cached_equals_recomputation, tiny_llava

import lvlm_guard as lg
from lvlm_guard.errors import GuardStateError, InterventionConfigError
from lvlm_guard.methods.token_exit import VisualTokenExit
from lvlm_guard.methods.token_exit.hooks import repack_indices, short_key_allowed


def test_repack_indices_left_pads_the_kept_rows():
    keep = torch.tensor([[True, False, True, True], [False, False, True, False]])
    index, valid = repack_indices(keep)
    assert index.tolist() == [[0, 2, 3], [0, 0, 2]]
    assert valid.tolist() == [[True, True, True], [False, False, True]]


def test_short_key_allowed_is_causal_in_slots_and_pads_see_themselves():
    keys = torch.tensor([[-1, 3, 5, 9]])
    queries = torch.tensor([[-1, 9]])  # this forward's two queries are the last two keys
    allowed = short_key_allowed(keys, queries)[0, 0]
    assert allowed.tolist() == [[False, False, True, False], [False, True, True, True]]


def reference_logits(model, inputs, exit_layer: int) -> list[torch.Tensor]:
    """Per sequence: stock layers <= exit_layer on everything, then layers > exit_layer on the
    text (non-image, non-padding) tokens only, at their original positions, plain causal mask."""
    lm = model.model.language_model
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    image_id = model.config.image_token_id
    results = []
    for b in range(inputs["input_ids"].shape[0]):
        ids, mask = inputs["input_ids"][b], inputs["attention_mask"][b].bool()
        keep = (ids != image_id) & mask
        positions = (mask.long().cumsum(0) - 1).clamp(min=0)  # what generate/LLaVA use with left padding
        h = out.hidden_states[exit_layer + 1][b : b + 1, keep].double()
        pos = positions[keep][None]
        n = h.shape[1]
        causal = torch.full((n, n), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)[None, None]
        lm64 = lm.double()
        with torch.no_grad():
            pe = lm64.rotary_emb(h, position_ids=pos)
            for layer in lm64.layers[exit_layer + 1 :]:
                h = layer(h, attention_mask=causal, position_embeddings=pe, position_ids=pos)
            logits = model.lm_head.double()(lm64.norm(h))[0]
        lm.float()
        model.lm_head.float()
        results.append(logits.float())
    return results


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("exit_layer", [0, 2])
def test_exit_equals_text_only_reference(attn, exit_layer):
    model, processor = tiny_llava(attn_implementation=attn)
    guard = lg.attach(model, processor, [VisualTokenExit(layer=exit_layer)])
    inputs = guard.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        logits = model(**inputs).logits
    guard.detach()
    expected = reference_logits(model, inputs, exit_layer)
    for b, ref in enumerate(expected):
        n = ref.shape[0]
        torch.testing.assert_close(logits[b, -n:], ref, rtol=1e-4, atol=1e-4)
    assert logits.shape[1] == max(r.shape[0] for r in expected)  # the sequence really shrank


def test_cached_generation_equals_recomputation_and_batch_equals_one_by_one():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [VisualTokenExit(layer=1)])
    inputs = guard.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        assert_cached_equals_recomputation(model, inputs, steps=5)
    batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=6)
    single = [guard.generate([img], [p], max_new_tokens=6) for img, p in zip(IMAGES, PROMPTS)]
    assert batch.token_ids == [s.token_ids[0] for s in single]
    guard.detach()


def test_later_layer_caches_hold_text_only():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [VisualTokenExit(layer=1)])
    inputs = guard.prepare([IMAGES[0]], [PROMPTS[0]])
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    cache = out.past_key_values
    assert cache.layers[1].keys.shape[2] == inputs["input_ids"].shape[1]
    assert cache.layers[2].keys.shape[2] == inputs["input_ids"].shape[1] - n_image
    guard.detach()


def _composed(model, name: str) -> lg.Intervention:
    if name == "pai":
        return lg.PAI(alpha=0.8, gamma=None, start_layer=0)
    if name == "var":
        return _sinky_var(model)
    return lg.VHR(alpha=2.5)


@pytest.mark.parametrize("name", ["pai", "var", "vhr"])
def test_composes_with_attention_guards_and_detach_is_bit_identical(name):
    """Guard + exit: the guard still acts in the layers up to the exit, the cache stays consistent
    (cached decoding == recomputation, batch == one by one), and off/detach restore the model."""
    model, processor = tiny_llava()
    plain = lg.Guard(model, processor, [])
    inputs = plain.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        before = model(**inputs).logits
    exit_only = lg.attach(model, processor, [VisualTokenExit(layer=2)])
    with torch.no_grad():
        only = model(**inputs).logits
    exit_only.detach()
    guard = lg.attach(model, processor, [_composed(model, name), VisualTokenExit(layer=2)])
    with torch.no_grad():
        both = model(**inputs).logits
        assert_cached_equals_recomputation(model, inputs, steps=4)
    assert both.shape == only.shape  # the image tokens left the sequence
    assert not torch.allclose(both[:, -1], only[:, -1])  # the guard still acts in layers <= exit
    batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=4)
    single = [guard.generate([img], [p], max_new_tokens=4) for img, p in zip(IMAGES, PROMPTS)]
    assert batch.token_ids == [s.token_ids[0] for s in single]
    with guard.disabled(), torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, rtol=0, atol=0)
    guard.detach()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, rtol=0, atol=0)


def test_bad_layer_and_static_cache_raise_typed_errors():
    model, processor = tiny_llava()
    with pytest.raises(InterventionConfigError, match="exit: layer 9"):
        lg.attach(model, processor, [VisualTokenExit(layer=9)])
    guard = lg.attach(model, processor, [VisualTokenExit(layer=1)])
    with pytest.raises(GuardStateError, match="dynamic KV cache"):
        guard.generate(IMAGES, PROMPTS, max_new_tokens=2, cache_implementation="static")
    guard.detach()


def test_router_decision_matches_hand_computation():
    from lvlm_guard.methods.token_exit import router_decision
    from lvlm_guard.methods.token_exit.router import ExitRouter, after_image_mask

    torch.manual_seed(0)
    router = ExitRouter(num_layers=3, hidden_size=4, width=16)
    hidden = torch.randn(2, 5, 4)
    image_tokens = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert after_image_mask(image_tokens, mask).tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    # float64, from DyVTE's modeling_llama.py: mean of the text after the image without the last
    # token, then the last token; Router = w2(GELU(w1 x)), no biases
    h = hidden.double()
    feats = torch.stack([torch.cat([h[0, 3:4].mean(0), h[0, -1]]), torch.cat([h[1, 2:4].mean(0), h[1, -1]])])
    w1, w2 = (m.weight.double() for m in (router.routers[1].w1, router.routers[1].w2))
    z = feats @ w1.T
    logits = (0.5 * z * (1 + torch.erf(z / 2**0.5))) @ w2.T
    torch.testing.assert_close(router.logits(1, router_features_of(hidden, image_tokens, mask)).double(), logits)
    p_exit = logits.softmax(-1)[:, 1]
    for threshold in (0.2, 0.5, 0.8):
        expected = bool((p_exit > threshold).all())
        assert router_decision(router, threshold, 1, hidden, image_tokens, mask) == expected
    assert router_decision(router, 0.5, 1, hidden, torch.zeros_like(image_tokens), mask) is False
    assert sum(p.numel() for p in router.routers[0].parameters()) == 8 * 16 + 16 * 2  # no biases


def router_features_of(hidden, image_tokens, mask):
    from lvlm_guard.methods.token_exit.router import after_image_mask, router_features

    return router_features(hidden, after_image_mask(image_tokens, mask))


def test_router_saves_half_and_refuses_old_linear_routers(tmp_path):
    from lvlm_guard.errors import InterventionConfigError
    from lvlm_guard.methods.token_exit.router import ExitRouter

    router = ExitRouter(2, 4, width=8)
    router.save(tmp_path)
    loaded = ExitRouter.load(tmp_path)
    assert loaded.width == 8
    for a, b in zip(router.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a.half().float(), b, rtol=0, atol=0)
    torch.save({"num_layers": 2, "hidden_size": 4, "state_dict": {}}, tmp_path / "router.pt")
    with pytest.raises(InterventionConfigError, match="retrain"):
        ExitRouter.load(tmp_path)


def test_router_that_exits_at_a_layer_equals_the_fixed_exit(tmp_path, monkeypatch):
    from lvlm_guard.methods.token_exit.router import ExitRouter

    model, processor = tiny_llava()
    spec_layers = model.config.text_config.num_hidden_layers
    router = ExitRouter(spec_layers, model.config.text_config.hidden_size, width=4)
    router.save(tmp_path)
    # the decision depends on the logits only: force them per layer (exit at layer 1 only)
    monkeypatch.setattr(
        ExitRouter,
        "logits",
        lambda self, layer, f: torch.tensor([[0.0, 5.0]] if layer == 1 else [[5.0, 0.0]]).expand(f.shape[0], 2),
    )
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    results = []
    for method in (VisualTokenExit(layer=1), VisualTokenExit(router=str(tmp_path))):
        guard = lg.attach(model, processor, [method])
        with torch.no_grad():
            results.append(model(**inputs).logits)
            if method.router is not None:
                assert_cached_equals_recomputation(model, inputs, steps=3)
        guard.detach()
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["tiny_llava_next", "tiny_qwen2_vl", "tiny_idefics3"])
def test_other_families_exit_shrinks_and_caches_consistently(family):
    import tiny_families
    from test_guard import image

    model, processor = getattr(tiny_families, family)()
    guard = lg.attach(model, processor, [VisualTokenExit(layer=0)])
    inputs = guard.prepare([image(1), image(2, (50, 30))], PROMPTS)
    with torch.no_grad():
        logits = model(**inputs).logits
        assert logits.shape[1] < inputs["input_ids"].shape[1] and torch.isfinite(logits).all()
        cached = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for step in range(3):  # each cached step equals a full recomputation without cache
            full = model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits
            torch.testing.assert_close(full[:, -1], cached.logits[step], rtol=1e-4, atol=1e-4)
            ids = torch.cat([ids, cached.sequences[:, ids.shape[1] : ids.shape[1] + 1]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            per_token = {k: v for k, v in extra.items() if v.dim() == 2 and v.shape[1] == ids.shape[1] - 1}
            extra.update({k: torch.cat([v, torch.zeros_like(v[:, :1])], 1) for k, v in per_token.items()})
    guard.detach()
