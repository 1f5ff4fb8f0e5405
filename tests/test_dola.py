"""DoLa (Chuang et al., ICLR 2024; voidism/DoLa): the contrast against a float64 reading of the
official `dola_greedy_decode`, the candidate buckets against transformers' rule, the guard's logits
against early exits computed from `output_hidden_states`, and the guard end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_vcd import IMAGES, PROMPTS
from tiny_families import FAMILIES
from transformers import RepetitionPenaltyLogitsProcessor

import lvlm_guard as lg
from lvlm_guard.errors import InterventionConfigError, InvalidSettingError
from lvlm_guard.methods.dola import DoLa, candidate_layers, dola_contrast
from lvlm_guard.methods.dola.repetition import RepetitionPenalty

STEPS = 4


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def official_dola(final: np.ndarray, premature: np.ndarray, relative_top: float) -> tuple[np.ndarray, int]:
    """generation/utils.py:2674-2705 of voidism/DoLa in float64, for one sequence (batch 1):
    final `[V]`, premature `[C, V]`."""
    p, q = np.exp(_log_softmax(final)), np.exp(_log_softmax(premature))
    m = 0.5 * (p[None] + q)
    kl1 = (m * (np.log(m) - _log_softmax(final)[None])).mean(-1)  # F.kl_div(log p, M)
    kl2 = (m * (np.log(m) - _log_softmax(premature))).mean(-1)
    chosen = int(np.argmax(0.5 * (kl1 + kl2)))
    scores = _log_softmax(final)
    scores = np.where(scores < scores.max() + np.log(relative_top), -np.inf, scores)  # relative_top_filter
    base = _log_softmax(premature[chosen])
    base = np.where(scores < -1e3, -1e3, base)
    return scores - base, chosen


def test_contrast_matches_the_official_code_in_float64():
    gen = torch.Generator().manual_seed(0)
    final = torch.randn(3, 2, 40, generator=gen) * 2  # [b, q, V]
    premature = torch.randn(4, 3, 2, 40, generator=gen) * 2  # [C, b, q, V]
    for relative_top in (0.1, 0.5, 1.0):
        scores, chosen = dola_contrast(final, premature, relative_top)
        for b in range(3):
            for q in range(2):
                expected, layer = official_dola(final[b, q].double().numpy(), premature[:, b, q].double().numpy(),
                                                relative_top)  # fmt: skip
                got = scores[b, q].double().numpy()
                assert int(chosen[b, q]) == layer
                assert np.array_equal(np.isinf(got), np.isinf(expected))
                np.testing.assert_allclose(got[~np.isinf(got)], expected[~np.isinf(expected)], rtol=1e-5, atol=1e-5)


def test_candidate_buckets_are_transformers_rule():
    assert candidate_layers("low", 32, tied_embeddings=False) == tuple(range(0, 16, 2))  # README.md:54
    assert candidate_layers("high", 32, tied_embeddings=False) == tuple(range(16, 32, 2))
    assert candidate_layers("low", 32, tied_embeddings=True) == tuple(range(2, 16, 2))
    assert candidate_layers("low", 48, tied_embeddings=False) == tuple(range(0, 20, 2))
    assert candidate_layers("high", 48, tied_embeddings=False) == tuple(range(28, 48, 2))
    assert candidate_layers("low", 2, tied_embeddings=True) == (1,)
    assert candidate_layers("low", 4, tied_embeddings=False) == (0,)


def test_repetition_penalty_is_transformers_rule_without_padding():
    gen = torch.Generator().manual_seed(3)
    scores, ids = torch.randn(2, 30, generator=gen), torch.randint(1, 30, (2, 7), generator=gen)
    ours = RepetitionPenalty(1.2, pad_token_id=0)
    torch.testing.assert_close(ours(ids, scores), RepetitionPenaltyLogitsProcessor(1.2)(ids, scores.clone()))
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], 1)
    assert torch.equal(ours(padded, scores), ours(ids, scores))  # padding is not a seen token


def test_settings_and_spec():
    assert lg.parse_guard_spec("dola:layers=high") == [DoLa(layers="high")]
    assert lg.parse_guard_spec("dola") == [DoLa()]
    assert lg.parse_guard_spec("dola:explicit_layers=0;2") == [DoLa(explicit_layers=(0, 2))]
    for bad in (dict(layers="middle"), dict(relative_top=0.0), dict(repetition_penalty=0.0)):
        with pytest.raises(InvalidSettingError):
            DoLa(**bad)
    with pytest.raises(InterventionConfigError, match="dola: layer 9 does not exist"):
        DoLa(explicit_layers=(0, 9)).plan(lg.ModelSpec(4, 4, 2, 8, 32))


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def family(request):
    return FAMILIES[request.param]()


@pytest.mark.parametrize("early_exit_norm", [False, True])
@torch.no_grad()
def test_guarded_logits_are_the_contrast_of_the_early_exits(family, early_exit_norm):
    model, processor = family
    config = DoLa(explicit_layers=(0, 1, 2), early_exit_norm=early_exit_norm)
    probe = lg.Guard(model, processor, [])
    inputs = probe.prepare(IMAGES, PROMPTS)
    plain = model(**inputs, output_hidden_states=True)
    head, norm = model.get_output_embeddings(), probe.adapter.language_model.norm
    exits = torch.stack([head(norm(plain.hidden_states[j]) if early_exit_norm else plain.hidden_states[j])
                         for j in (0, 1, 2)])  # fmt: skip
    expected, _ = dola_contrast(plain.logits, exits, 0.1)
    guard = lg.attach(model, processor, [config])
    try:
        guarded = model(**inputs).logits
    finally:
        guard.detach()
    real = inputs["attention_mask"].bool()
    assert torch.equal(torch.isinf(guarded[real]), torch.isinf(expected[real]))
    finite = ~torch.isinf(expected[real])
    torch.testing.assert_close(guarded[real][finite], expected[real][finite], rtol=1e-4, atol=1e-4)
    assert torch.equal(model(**inputs).logits, plain.logits)  # detached: bit-identical


def test_generation_runs_batches_and_detaches_bit_identically(family):
    model, processor = family
    probe = lg.Guard(model, processor, [])
    inputs = probe.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        before = model(**inputs).logits
        plain = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
    guard = lg.attach(model, processor, lg.parse_guard_spec("dola:layers=high,pai:gamma=none"))
    try:
        (processor_,) = guard.logits_processors(PROMPTS)
        assert isinstance(processor_, RepetitionPenalty) and processor_.penalty == 1.2
        batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=STEPS)
        single = [guard.generate([img], [p], max_new_tokens=STEPS) for img, p in zip(IMAGES, PROMPTS)]
        static = guard.generate(IMAGES, PROMPTS, max_new_tokens=STEPS, cache_implementation="static")
    finally:
        guard.detach()
    assert batch.token_ids == [s.token_ids[0] for s in single]
    assert static.token_ids == batch.token_ids
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)
        assert torch.equal(model.generate(**inputs, max_new_tokens=STEPS, do_sample=False), plain)
