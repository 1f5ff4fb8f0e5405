"""The fused attention-edit paths against float64 eager math on small random tensors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lvlm_guard.engine.attention import LayerAttention
from lvlm_guard.engine.edits import AttentionEdit
from lvlm_guard.engine.state import GuardState
from lvlm_guard.methods import PAI
from lvlm_guard.models import ModelSpec

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

B, H, KV, D = 2, 4, 2, 8
SCALING = D**-0.5


def fake_module(num_kv_groups: int, impl: str = "lvlm_guard_sdpa"):
    return SimpleNamespace(
        config=SimpleNamespace(_attn_implementation=impl),
        scaling=SCALING,
        num_key_value_groups=num_kv_groups,
        is_causal=True,
        training=False,
        layer_idx=0,
    )


def reference(q, k, v, allowed, bias):
    """float64 eager attention with an additive bias; returns `[b, q, h, d]`."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    logits = q.double() @ k.transpose(-1, -2) * SCALING
    logits = logits + bias(logits)
    logits = logits.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(logits, -1) @ v).transpose(1, 2)


def pai_bias(alpha, image_keys, rows, heads):
    def bias(logits):
        sel = torch.zeros_like(logits, dtype=torch.bool)
        for r in rows:
            sel[:, heads, r, :] = True
        sel &= image_keys[:, None, None, :]
        return torch.where(sel, alpha * logits.abs(), torch.zeros_like(logits))

    return bias


def pai_edit(alpha: float) -> AttentionEdit:
    """The edit the real PAI plans (its fast bias), for a one-layer model of this test's shape."""
    (edit,) = PAI(alpha=alpha, start_layer=0, gamma=None).plan(ModelSpec(1, H, KV, D, H * D)).attention[0]
    return edit


def run(layer, q, k, v, mask):
    from lvlm_guard.engine.attention import stock_attention_function

    module = fake_module(q.shape[1] // k.shape[1])
    out, _ = layer(module, q, k, v, mask, stock_attention_function(module), scaling=SCALING)
    return out


def random_case(q_len, k_len, kv_heads=KV):
    q = torch.randn(B, H, q_len, D)
    k = torch.randn(B, kv_heads, k_len, D)
    v = torch.randn(B, kv_heads, k_len, D)
    image_keys = torch.zeros(B, k_len, dtype=torch.bool)
    image_keys[:, 2:7] = True
    image_keys[1, 1] = True
    return q, k, v, image_keys


def causal(q_len, k_len, offset):
    pos = torch.arange(q_len) + offset
    return (torch.arange(k_len)[None, :] <= pos[:, None])[None, None].expand(B, 1, q_len, k_len)


@pytest.mark.parametrize("kv_heads", [KV, H])
def test_pai_prefill_edits_only_the_last_row(kv_heads):
    q, k, v, image_keys = random_case(10, 10, kv_heads)
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, 10, dtype=torch.long))
    edit = pai_edit(0.7)
    out = run(LayerAttention(0, [edit], state, H), q, k, v, None)
    ref = reference(q, k, v, causal(10, 10, 0), pai_bias(0.7, image_keys, [9], list(range(H))))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_pai_with_left_padding_mask_and_head_subset():
    q, k, v, image_keys = random_case(9, 9)
    allowed = causal(9, 9, 0).clone()
    allowed[1, :, :, :3] = False  # sequence 1 is left-padded by 3
    allowed[1, :, :3, :] = False
    allowed[1, :, torch.arange(3), torch.arange(3)] = True  # padded rows see themselves (finite)
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, 9, dtype=torch.long))
    edit = AttentionEdit(heads=(1, 3), score_mod=pai_edit(0.5).score_mod)
    out = run(LayerAttention(0, [edit], state, H), q, k, v, allowed)
    ref = reference(q, k, v, allowed, pai_bias(0.5, image_keys, [8], [1, 3]))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(params=["off", "reference"])
def fused_mode(request, monkeypatch):
    """Decoding steps through the SDPA-with-bias path ("off") and the fused FlexAttention path."""
    import lvlm_guard.engine.attention as attention
    import lvlm_guard.engine.attention_math as am

    calls = []
    original = am.attend_with_score_mods
    monkeypatch.setattr(am, "attend_with_score_mods", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    yield SimpleNamespace(mode=request.param, calls=calls, paths=attention.FastPaths(score_mods=request.param))
    assert bool(calls) == (request.param == "reference"), "the fused path was (not) taken"


def test_pai_decoding_step_with_static_cache_capacity(fused_mode):
    """One query against a cache longer than the sequence: masked slots must stay masked."""
    q, k, v, image_keys = random_case(1, 16)
    allowed = torch.zeros(B, 1, 1, 16, dtype=torch.bool)
    allowed[:, :, :, :12] = True
    state = GuardState(image_keys=image_keys[:, :12], prompt_ids=torch.zeros(B, 10, dtype=torch.long))
    edit = pai_edit(0.3)
    out = run(LayerAttention(0, [edit], state, H, paths=fused_mode.paths), q, k, v, allowed)
    ref = reference(
        q,
        k,
        v,
        allowed,
        pai_bias(0.3, torch.cat([image_keys[:, :12], torch.zeros(B, 4, dtype=torch.bool)], 1), [0], list(range(H))),
    )
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_pai_decoding_step_without_mask_uses_every_key(fused_mode):
    q, k, v, image_keys = random_case(1, 11)
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, 10, dtype=torch.long))
    out = run(LayerAttention(0, [pai_edit(0.5)], state, H, paths=fused_mode.paths), q, k, v, None)
    allowed = torch.ones(B, 1, 1, 11, dtype=torch.bool)
    ref = reference(q, k, v, allowed, pai_bias(0.5, image_keys, [0], list(range(H))))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [KV, H])
def test_fused_decoding_step_with_left_padding(fused_mode, kv_heads):
    """Per-sequence padding masks reach the fused kernel; GQA keys are not repeated."""
    q, k, v, image_keys = random_case(1, 13, kv_heads)
    allowed = torch.ones(B, 1, 1, 13, dtype=torch.bool)
    allowed[1, :, :, :4] = False
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, 10, dtype=torch.long))
    out = run(LayerAttention(0, [pai_edit(0.8)], state, H, paths=fused_mode.paths), q, k, v, allowed)
    ref = reference(q, k, v, allowed, pai_bias(0.8, image_keys, [0], list(range(H))))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_fused_path_is_skipped_for_a_head_subset(monkeypatch):
    """A score_mod on some heads only runs as the equivalent bias (still exact)."""
    import lvlm_guard.engine.attention as attention

    monkeypatch.setattr(attention.am, "attend_with_score_mods", None)  # would raise if called
    q, k, v, image_keys = random_case(1, 9)
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, 8, dtype=torch.long))
    edit = AttentionEdit(heads=(0, 2), score_mod=pai_edit(0.5).score_mod)
    out = run(LayerAttention(0, [edit], state, H, paths=attention.FastPaths(score_mods="reference")), q, k, v, None)
    allowed = torch.ones(B, 1, 1, 9, dtype=torch.bool)
    ref = reference(q, k, v, allowed, pai_bias(0.5, image_keys, [0], [0, 2]))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_static_cache_prefill_without_mask_uses_the_cropped_causal_layout():
    q, k, v, image_keys = random_case(6, 12)
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, 6, dtype=torch.long))
    edit = pai_edit(0.4)
    out = run(LayerAttention(0, [edit], state, H), q, k, v, None)
    ref = reference(q, k, v, causal(6, 12, 0), pai_bias(0.4, image_keys, [5], list(range(H))))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_recomputation_edits_every_generating_row():
    """Prompt of 7 tokens + 3 generated ones, no cache: rows 6..9 are the generating rows."""
    q, k, v, image_keys = random_case(10, 10)
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, 7, dtype=torch.long))
    edit = pai_edit(0.6)
    out = run(LayerAttention(0, [edit], state, H), q, k, v, None)
    ref = reference(q, k, v, causal(10, 10, 0), pai_bias(0.6, image_keys, [6, 7, 8, 9], list(range(H))))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_post_softmax_reweight_and_composition_with_a_bias():
    """A reweight (double image mass, renormalise) on heads 0,2 after a bias on all heads."""
    q, k, v, image_keys = random_case(5, 5)
    state = GuardState(image_keys=image_keys, prompt_ids=torch.zeros(B, 5, dtype=torch.long))

    def double_image(rows, probs):
        w = probs * (1 + rows.image_keys[:, None, None, :].float())
        return w / w.sum(-1, keepdim=True)

    edits = [
        pai_edit(0.2),
        AttentionEdit(heads=(0, 2), rows="all", reweight=double_image),
    ]
    out = run(LayerAttention(0, edits, state, H), q, k, v, None)

    group = H // KV
    kk = k.double().repeat_interleave(group, 1)
    vv = v.double().repeat_interleave(group, 1)
    logits = q.double() @ kk.transpose(-1, -2) * SCALING
    logits = logits + pai_bias(0.2, image_keys, [4], list(range(H)))(logits)
    logits = logits.masked_fill(~causal(5, 5, 0), float("-inf"))
    p = torch.softmax(logits, -1)
    w = p * (1 + image_keys[:, None, None, :].double())
    p[:, [0, 2]] = (w / w.sum(-1, keepdim=True))[:, [0, 2]]
    ref = (p @ vv).transpose(1, 2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_no_edit_layer_returns_the_stock_output_unchanged():
    q, k, v, image_keys = random_case(5, 5)
    state = GuardState(image_keys=image_keys)
    from lvlm_guard.engine.attention import stock_attention_function

    module = fake_module(H // KV)
    plain, _ = stock_attention_function(module)(module, q, k, v, None, scaling=SCALING)
    guarded = run(LayerAttention(0, [], state, H), q, k, v, None)
    assert torch.equal(plain, guarded)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,kv_heads", [(1, 32), (3, 8)])
def test_compiled_fused_kernel_matches_float64_on_cuda(batch, kv_heads):
    """The generated FlexAttention kernel at LLaVA-7B head shapes, bf16, with padding and GQA."""
    import lvlm_guard.engine.attention_math as am

    heads, d, k_len = 32, 128, 700
    gen = torch.Generator().manual_seed(batch)
    q = torch.randn(batch, heads, 1, d, generator=gen).cuda().bfloat16()
    k = torch.randn(batch, kv_heads, k_len, d, generator=gen).cuda().bfloat16()
    v = torch.randn(batch, kv_heads, k_len, d, generator=gen).cuda().bfloat16()
    allowed = torch.ones(batch, 1, 1, k_len, dtype=torch.bool, device="cuda")
    allowed[-1, ..., :50] = False  # a left-padded sequence
    allowed[..., 650:] = False  # static-cache slots not written yet
    image_keys = torch.zeros(batch, k_len, dtype=torch.bool, device="cuda")
    image_keys[:, 40:616] = True
    weights = image_keys.float() * 0.5
    mods = [(lambda s, w: s + w * s.abs(), weights)]
    out = am.attend_with_score_mods(q, k, v, allowed, mods, d**-0.5, compiled=True)
    group = heads // kv_heads
    logits = q.double() @ k.double().repeat_interleave(group, 1).transpose(-1, -2) * d**-0.5
    logits = logits + 0.5 * image_keys.double()[:, None, None, :] * logits.abs()
    logits = logits.masked_fill(~allowed, float("-inf"))
    ref = torch.softmax(logits, -1) @ v.double().repeat_interleave(group, 1)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


def test_pai_eager_bias_equals_its_score_mod_form():
    """PAI's three-kernel bias and `fn(s, w) - s` are the same numbers (float64)."""
    import dataclasses

    q, k, v, image_keys = random_case(3, 11)
    q, k = q.double(), k.double()
    state = GuardState(image_keys=image_keys)
    mod = pai_edit(0.35).score_mod
    from lvlm_guard.engine.edits import AttentionRows

    rows = AttentionRows(0, q, k.repeat_interleave(H // KV, 1), SCALING, image_keys, None, 0, False, state)
    fast = mod.bias(rows)
    generic = dataclasses.replace(mod, eager_bias=None).bias(rows)
    torch.testing.assert_close(fast.double(), generic.double(), rtol=1e-6, atol=1e-6)  # generic path rounds to float32
    assert (fast[..., image_keys[0]].abs().sum() > 0) and fast[0][..., ~image_keys[0]].abs().max() == 0
