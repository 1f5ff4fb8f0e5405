"""The pure functions behind scripts/diagnose_organism.py, against hand-computed or planted values."""

from __future__ import annotations

import math

import pytest
import torch

from lvlm_guard.embedded.diagnostics import (
    attention_mass,
    frequent_dims,
    image_centric_heads,
    key_fraction,
    massive_dims,
    pad_keys,
    rms_normalise,
    rms_normalised_bound,
    scaled_tau,
    sink_tokens,
    top_decile_threshold,
    top_share,
)
from lvlm_guard.errors import InputMismatchError


def test_attention_mass_sums_probabilities_on_image_keys():
    # one sequence, two heads, one row, four keys; keys 1 and 2 are image tokens
    probs = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]], [[0.5, 0.0, 0.25, 0.25]]]])  # [1, 2, 1, 4]
    image = torch.tensor([[False, True, True, False]])
    share = attention_mass(probs, image)
    assert share.shape == (1, 2, 1)
    assert torch.allclose(share.flatten(), torch.tensor([0.5, 0.25]))


def test_attention_mass_per_sequence_masks_and_padding():
    probs = torch.full((2, 1, 1, 5), 0.2)
    image = pad_keys(torch.tensor([[True, True, False], [False, False, False]]), 5)
    assert image.tolist() == [[True, True, False, False, False], [False] * 5]
    assert torch.allclose(attention_mass(probs, image).flatten(), torch.tensor([0.4, 0.0]))


def test_attention_mass_rejects_mismatched_mask():
    with pytest.raises(InputMismatchError, match="expected"):
        attention_mass(torch.ones(1, 1, 1, 4), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(InputMismatchError):
        pad_keys(torch.ones(1, 4, dtype=torch.bool), 3)


def test_key_fraction_is_uniform_attention_share():
    keys = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert key_fraction(keys).tolist() == [0.75, 0.25]
    visible = torch.tensor([[True, True, True, True], [True, True, False, False]])  # left part visible
    assert key_fraction(keys, visible).tolist() == [0.75, 0.5]
    uniform = visible.float()[:, None, None, :] / visible.sum(-1).float()[:, None, None, None]
    assert torch.allclose(attention_mass(uniform, keys).flatten().double(), key_fraction(keys, visible))


def test_rms_normalise_and_its_bound():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    # rms of [3, 4] is sqrt(12.5); of [0, 2] is sqrt(2)
    expected = torch.tensor([[3 / math.sqrt(12.5), 4 / math.sqrt(12.5)], [0.0, math.sqrt(2)]])
    assert torch.allclose(rms_normalise(x), expected, atol=1e-5)
    one_hot = torch.zeros(384)
    one_hot[7] = 5.0
    assert rms_normalise(one_hot).abs().max().item() == pytest.approx(rms_normalised_bound(384), rel=1e-5)
    assert rms_normalised_bound(4096) == 64.0
    assert scaled_tau(4096) == 20.0
    assert scaled_tau(384) == pytest.approx(20 * math.sqrt(384 / 4096))


def _hidden_with_planted_sinks(seed: int = 0) -> torch.Tensor:
    """[10 tokens, 64 dims] of unit noise; token 0 (BOS) and tokens 4, 6 carry 200 in dim 11."""
    hidden = torch.randn(10, 64, generator=torch.Generator().manual_seed(seed))
    hidden[[0, 4, 6], 11] = 200.0
    return hidden


def test_massive_dims_finds_planted_dimension():
    hidden = _hidden_with_planted_sinks()
    bos = torch.zeros(10, dtype=torch.bool)
    bos[0] = True
    text = torch.zeros(10, dtype=torch.bool)
    text[[1, 2, 3]] = True
    assert massive_dims(hidden, bos) == [11]
    assert massive_dims(hidden, text) == []


def test_sink_tokens_finds_planted_tokens_only_at_sink_dims():
    hidden = _hidden_with_planted_sinks()
    # RMS of a planted row is about 200 / sqrt(64) = 25, so its normalised value is about 8 > tau 5
    assert sink_tokens(hidden, [11], tau=5.0).nonzero().flatten().tolist() == [0, 4, 6]
    assert not sink_tokens(hidden, [12, 13], tau=5.0).any()
    assert not sink_tokens(hidden, [], tau=5.0).any()
    # the bound sqrt(D) = 8 makes tau = 20 unreachable at D = 64, whatever the activations
    assert not sink_tokens(hidden * 1000, [11], tau=20.0).any()
    batched = torch.stack([hidden, torch.randn(10, 64)])  # [2, q, D]
    assert sink_tokens(batched, [11], tau=5.0).sum(-1).tolist() == [3, 0]
    with pytest.raises(InputMismatchError, match="outside hidden size"):
        sink_tokens(hidden, [64])


def test_frequent_dims_and_top_share():
    assert frequent_dims({3: 9, 5: 5, 7: 4}, total=10, min_fraction=0.5) == [3, 5]
    assert frequent_dims({3: 1}, total=0) == []
    assert top_share(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2) == pytest.approx(0.7)
    assert top_share(torch.zeros(3), 1) == 0.0


def test_image_centric_heads_and_top_decile():
    share = torch.tensor([[0.1, 0.6], [0.55, 0.2]])  # [layers, heads]
    assert image_centric_heads(share, 0.5) == [(0, 1), (1, 0)]
    assert top_decile_threshold(torch.arange(11.0)) == pytest.approx(9.0)
    with pytest.raises(InputMismatchError):
        image_centric_heads(share.flatten(), 0.5)
