"""IAF: the fused modulation against a literal float64 reweight-and-renormalise, and the guard end to end."""

from __future__ import annotations

import math

import pytest
import torch
from test_attention_edits import SCALING, causal, fake_module, random_case
from test_guard import IMAGES, PROMPTS
from test_var import _sinky_var
from tiny_models import assert_cached_equals_recomputation, tiny_llava

import lvlm_guard as lg
from lvlm_guard.attention import LayerAttention, stock_attention_function
from lvlm_guard.methods.iaf import local_informativeness, top_share
from lvlm_guard.models import ModelSpec
from lvlm_guard.state import GuardState

B, H, KV, D = 2, 4, 2, 8


def literal_iaf(probs, keys, image, alpha, local_ratio, spatial_ratio):
    """The method as written in its docstring, one row at a time in float64: select the two streams,
    multiply the selected keys' weights by 1 + alpha * sensitivity, renormalise."""
    out = probs.clone()
    b, h, r, k = probs.shape
    for i in range(b):
        idx = [j for j in range(k) if image[i, j]]
        n = len(idx)
        local_score = {}
        for j in idx:
            neighbours = [keys[i, :, j + s] for s in (-1, 1) if 0 <= j + s < k and image[i, j + s]]
            local_score[j] = (
                (keys[i, :, j] - sum(neighbours) / len(neighbours)).norm(dim=-1).mean().item() if neighbours else 0.0
            )
        local = set(sorted(idx, key=lambda j: -local_score[j])[: math.ceil(local_ratio * n)])
        for t in range(r):
            received = probs[i, :, t].mean(0)
            spatial = set(sorted(idx, key=lambda j: -received[j].item())[: math.ceil(spatial_ratio * n)])
            chosen = sorted(local | spatial)
            shares = probs[i, :, t][:, idx].sum(-1)
            for j in range(h):
                row = probs[i, j, t].clone()
                row[chosen] *= 1 + alpha * shares[j] / shares.mean()
                out[i, j, t] = row / row.sum()
    return out


def test_top_share_and_local_informativeness_pick_the_planted_tokens():
    key = torch.zeros(1, 2, 8, 4)
    key[0, :, 4] = 3.0  # an outlier inside a flat image region 1..6
    image = torch.zeros(1, 8, dtype=torch.bool)
    image[0, 1:7] = True
    scores = local_informativeness(key, image)
    assert scores[0, 4] == scores.max() and scores[0, 0] == 0 and scores[0, 7] == 0
    chosen = top_share(scores, image, 0.1)  # ceil(0.6) = 1 token
    assert chosen[0].nonzero().flatten().tolist() == [4]
    assert not top_share(scores, image, 0.0).any()
    assert torch.equal(top_share(scores, image, 1.0), image)


@pytest.mark.parametrize("q_len, k_len", [(10, 10), (1, 12)])
def test_iaf_through_sdpa_equals_float64_literal_rule(q_len, k_len):
    """Prefill (last row edited) and a decoding step: fused output == literal reweight @ v."""
    torch.manual_seed(3)
    q, k, v, image = random_case(q_len, k_len)
    cfg = lg.IAF(alpha=0.8, local_ratio=0.3, spatial_ratio=0.2, start_layer=0, end_layer=1)
    (edit,) = cfg.plan(ModelSpec(1, H, KV, D, H * D)).attention[0]
    offset = k_len - q_len
    state = GuardState(image_keys=image, prompt_ids=torch.zeros(B, 10, dtype=torch.long))
    state.query_offset = offset
    allowed = causal(q_len, k_len, offset)
    module = fake_module(H // KV)
    out, _ = LayerAttention(0, [edit], state, H)(
        module, q, k, v, allowed, stock_attention_function(module), scaling=SCALING
    )

    kr, vr = k.double().repeat_interleave(H // KV, 1), v.double().repeat_interleave(H // KV, 1)
    logits = (q.double() @ kr.transpose(-1, -2) * SCALING).masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(logits, -1)
    new = probs.clone()
    new[:, :, -1:] = literal_iaf(probs[:, :, -1:], kr, image, cfg.alpha, cfg.local_ratio, cfg.spatial_ratio)
    assert not torch.allclose(new, probs)
    torch.testing.assert_close(new.sum(-1), torch.ones_like(new.sum(-1)))
    torch.testing.assert_close(out.double(), (new @ vr).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_iaf_changes_logits_cached_equals_recomputation_and_detach_restores():
    model, processor = tiny_llava()
    inputs = lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        plain = model(**inputs).logits
    guard = lg.attach(model, processor, [lg.IAF(alpha=2.0, local_ratio=0.3, spatial_ratio=0.3, start_layer=0)])
    steps = 3
    with torch.no_grad():
        guarded = model(**inputs).logits
        assert not torch.allclose(plain[:, -1], guarded[:, -1])
        assert_cached_equals_recomputation(model, inputs, steps)
    guard.detach()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)


def test_iaf_composes_with_var_and_pai_and_batch_equals_one_by_one():
    model, processor = tiny_llava()
    iaf = lg.IAF(alpha=2.0, local_ratio=0.3, spatial_ratio=0.3)
    guards = [_sinky_var(model), lg.PAI(alpha=0.5, gamma=None), iaf]
    guard = lg.attach(model, processor, guards)
    batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=4)
    single = [guard.generate([img], [p], max_new_tokens=4) for img, p in zip(IMAGES, PROMPTS)]
    assert batch.token_ids == [s.token_ids[0] for s in single]
    inputs = guard.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        composed = model(**inputs).logits[:, -1]
    guard.detach()
    without = lg.attach(model, processor, guards[:2])
    with torch.no_grad():
        assert not torch.allclose(composed, model(**inputs).logits[:, -1])
    without.detach()


def test_iaf_spec_and_bad_settings():
    (iaf,) = lg.parse_guard_spec("iaf:alpha=1.5:local_ratio=0.2")
    assert iaf == lg.IAF(alpha=1.5, local_ratio=0.2)
    assert lg.IAF(alpha=0).plan(ModelSpec(4, H, KV, D, H * D)).attention == {}
    with pytest.raises(lg.InterventionConfigError, match="alpha"):
        lg.IAF(alpha=-1)
    with pytest.raises(lg.InterventionConfigError, match="spatial_ratio"):
        lg.IAF(spatial_ratio=1.5)
    with pytest.raises(lg.InterventionConfigError, match="layers"):
        lg.IAF(end_layer=99).plan(ModelSpec(4, H, KV, D, H * D))
