"""The fused decoding kernel against float64 references of PAI's and VAR's formulas.

Without CUDA the kernel runs in Triton's interpreter (`TRITON_INTERPRET=1`, set by conftest.py
before Triton is imported), so CI checks the same kernel code that runs on the GPU.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from test_attention_edits import pai_edit, run  # noqa: E402
from test_guard import IMAGES, PROMPTS  # noqa: E402
from test_var import _sinky_var  # noqa: E402
from tiny_models import tiny_llava  # noqa: E402

import lvlm_guard as lg  # noqa: E402
from lvlm_guard.engine import attention  # noqa: E402
from lvlm_guard.engine.attention import LayerAttention  # noqa: E402
from lvlm_guard.engine.kernels import decode_kernel  # noqa: E402
from lvlm_guard.engine.kernels.decode_kernel import AMPLIFY, REDISTRIBUTE, DecodeKernel, decode_attention  # noqa: E402
from lvlm_guard.engine.state import GuardState  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, H, KV, D, K, PROMPT = 2, 4, 2, 16, 150, 110  # K not a multiple of the kernel's key block
SCALING = D**-0.5


def _inputs(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, 1, D, generator=g) * 2
    k = torch.randn(B, KV, K, D, generator=g)
    v = torch.randn(B, KV, K, D, generator=g)
    allowed = torch.ones(B, 1, 1, K, dtype=torch.bool)
    allowed[0, ..., :7] = False  # sequence 0 is left-padded by 7
    image = torch.zeros(B, K, dtype=torch.bool)
    image[0, 27:100] = True
    image[1, 20:93] = True
    sinks = torch.zeros(B, PROMPT, dtype=torch.bool)
    sinks[0, [7, 40, 41, 77]] = True  # BOS (text sink) and visual sinks
    sinks[1, [0, 22, 60]] = True
    k[0, :, [40, 41, 77]] += 3 * q[0, ::2, 0].mean(0)  # make the visual sinks attract attention
    to = {"device": DEVICE}
    return (q.to(dtype=dtype, **to), k.to(dtype=dtype, **to), v.to(dtype=dtype, **to),
            allowed.to(**to), image.to(**to), sinks.to(**to))  # fmt: skip


def _probs64(q, k, allowed, image, alpha=0.0, apply=None):
    """`[b, h, r, k]` float64 attention of the query rows (scaled by d^-0.5, keys shared by
    groups); image keys amplified in the rows `apply` `[b, r]` marks (None: every row)."""
    kr = k.double().repeat_interleave(q.shape[1] // k.shape[1], 1)
    s = (q.double() @ kr.transpose(-1, -2)) * q.shape[-1] ** -0.5
    reach = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device) if apply is None else apply
    s = torch.where(image[:, None, None] & reach[:, None, :, None], s + alpha * s.abs(), s)
    s = s.masked_fill(~allowed, float("-inf"))
    return s.softmax(-1)


def _attend64(probs, q, v):
    """`[b, h, r, d]`."""
    return probs @ v.double().repeat_interleave(q.shape[1] // v.shape[1], 1)


def _pai_reference(q, k, v, allowed, image, alpha, apply=None):
    return _attend64(_probs64(q, k, allowed, image, alpha, apply), q, v)


def _var_reference(q, k, v, allowed, image, sinks, p, rho, summ, apply=None):
    """VAR's rule written out row by row: masses, selection, sinks x p, freed mass to free image keys."""
    probs = _probs64(q, k, allowed, image)
    sink = torch.zeros_like(image)
    sink[:, : sinks.shape[1]] = sinks
    for b, h, r in itertools.product(range(q.shape[0]), range(q.shape[1]), range(q.shape[2])):
        if apply is not None and not apply[b, r]:
            continue
        row = probs[b, h, r]
        image_mass = row[image[b]].sum()
        visual_sink_mass = row[image[b] & sink[b]].sum()
        free = image[b] & ~sink[b]
        free_mass = row[free].sum()
        if visual_sink_mass <= rho * image_mass and image_mass >= summ and free_mass > 0:
            sink_mass = row[sink[b]].sum()
            new = row.clone()
            new[sink[b]] *= p
            new[free] *= 1 + (1 - p) * sink_mass / free_mass
            probs[b, h, r] = new
    return _attend64(probs, q, v)


SPLITS = [1, 0, 4]  # one launch; `key_splits`' choice; splits that cut through key blocks


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("masked", [True, False])
def test_amplify_equals_float64_pai(masked, splits):
    q, k, v, allowed, image, _ = _inputs(0)
    if not masked:
        allowed = torch.ones_like(allowed)
    spec = DecodeKernel(AMPLIFY, alpha=0.7)
    out = decode_attention(q, k, v, allowed if masked else None, image, spec, None, SCALING, splits)
    assert out.shape == (B, 1, H, D)
    torch.testing.assert_close(
        out.transpose(1, 2).double(), _pai_reference(q, k, v, allowed, image, 0.7), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize(("rho", "summ"), [(1.0, 0.0), (0.5, 0.2), (0.02, 0.0)])
def test_redistribute_equals_float64_var(rho, summ, splits):
    q, k, v, allowed, image, sinks = _inputs(1)
    spec = DecodeKernel(REDISTRIBUTE, p=0.3, rho=rho, summ=summ)
    out = decode_attention(q, k, v, allowed, image, spec, sinks, SCALING, splits)
    expected = _var_reference(q, k, v, allowed, image, sinks, 0.3, rho, summ)
    plain = _pai_reference(q, k, v, allowed, image, 0.0)
    torch.testing.assert_close(out.transpose(1, 2).double(), expected, rtol=1e-5, atol=1e-5)
    if rho == 1.0:
        assert not torch.allclose(expected, plain)  # the case really redistributes


@pytest.mark.parametrize(("splits", "dot_values"), [(1, False), (0, False), (4, False), (1, True), (0, True)])
@pytest.mark.parametrize("mode", [AMPLIFY, REDISTRIBUTE])
def test_several_prompt_rows_with_causal_masks_and_a_per_row_reach(mode, splits, dot_values, monkeypatch):
    """A prefill's edited rows: the last 6 queries, each with its own causal+padding mask, the
    edit reaching only rows after each sequence's image (the rest plain attention); value sums
    by reductions and by `tl.dot`."""
    monkeypatch.setattr(decode_kernel, "DOT_VALUES", dot_values)
    q, k, v, allowed, image, sinks = _inputs(4)
    rows = 6
    q = torch.randn(B, H, rows, D, generator=torch.Generator().manual_seed(5)).to(q)
    positions = torch.arange(K - rows, K)  # the rows' cache slots: the last six
    causal = torch.arange(K)[None, :] <= positions[:, None]  # [r, k]
    allowed = (allowed[:, :, :1] & causal.to(allowed.device)[None, None]).contiguous()  # [b, 1, r, k]
    apply = torch.ones(B, rows, dtype=torch.bool, device=q.device)
    apply[1, :3] = False  # as if sequence 1's image ended after its first three rows
    spec = DecodeKernel(mode, alpha=0.6, p=0.4, rho=1.0, summ=0.0)
    out = decode_attention(q, k, v, allowed, image, spec, sinks, SCALING, splits, apply)
    assert out.shape == (B, rows, H, D)
    if mode == AMPLIFY:
        expected = _pai_reference(q, k, v, allowed, image, 0.6, apply)
    else:
        expected = _var_reference(q, k, v, allowed, image, sinks, 0.4, 1.0, 0.0, apply)
    plain = _pai_reference(q, k, v, allowed, image, 0.0)
    torch.testing.assert_close(out.transpose(1, 2).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(expected[1, :, :3], plain[1, :, :3])  # unreached rows are plain
    assert not torch.allclose(expected[0], plain[0])  # reached rows really change


@pytest.mark.parametrize("mode", [AMPLIFY, REDISTRIBUTE])
def test_a_split_with_every_key_masked_drops_out(mode):
    """A static cache's unwritten tail: whole splits without one allowed key merge as nothing."""
    q, k, v, allowed, image, sinks = _inputs(3)
    allowed[..., 112:] = False  # splits of 38 keys: the last one entirely masked
    spec = DecodeKernel(mode, alpha=0.4, p=0.5, rho=1.0, summ=0.0)
    out = decode_attention(q, k, v, allowed, image, spec, sinks, SCALING, 4)
    if mode == AMPLIFY:
        expected = _pai_reference(q, k, v, allowed, image, 0.4)
    else:
        expected = _var_reference(q, k, v, allowed, image, sinks, 0.5, 1.0, 0.0)
    assert out.isfinite().all()
    torch.testing.assert_close(out.transpose(1, 2).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("rows", "n_keys"), [(32, 685), (256, 685), (8, 150), (1024, 64), (1, 5000), (3, 1)])
def test_key_splits_cover_the_keys_in_whole_blocks(rows, n_keys):
    splits, per_split = decode_kernel.key_splits(rows, n_keys)
    assert per_split % decode_kernel.BLOCK_KEYS == 0
    assert (splits - 1) * per_split < n_keys <= splits * per_split  # no empty split, no key left out
    assert rows * splits <= max(decode_kernel.TARGET_PROGRAMS, rows)


def test_bf16_inputs_stay_close_to_the_reference():
    q, k, v, allowed, image, _ = _inputs(2, torch.bfloat16)
    out = decode_attention(q, k, v, allowed, image, DecodeKernel(AMPLIFY, alpha=0.5), None, SCALING)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.transpose(1, 2).double(), _pai_reference(q, k, v, allowed, image, 0.5), rtol=2e-2, atol=2e-2
    )


@pytest.mark.parametrize("method", ["pai", "var"])
def test_guarded_generation_with_the_kernel_equals_the_bias_path(method, monkeypatch):
    model, processor = tiny_llava()
    guard_method = lg.PAI(alpha=0.8, gamma=None) if method == "pai" else _sinky_var(model)
    calls = []
    kernel_call = decode_kernel.decode_attention

    def counted(query, *args, **kwargs):
        calls.append(query.shape[2])  # query rows
        return kernel_call(query, *args, **kwargs)

    def generate(setting: str):
        guard = lg.attach(model, processor, [guard_method], paths=lg.FastPaths(decode_kernel=setting))
        try:
            inputs = guard.prepare(IMAGES, PROMPTS)
            with torch.no_grad():
                return guard, model.generate(
                    **inputs, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
                )
        finally:
            guard.detach()

    _, base = generate("off")
    assert not calls
    monkeypatch.setattr(attention.dk, "decode_attention", counted)
    guard, fused = generate("on")
    layers = len(guard_method.layers(guard.adapter.spec))
    assert calls.count(1) >= 5 * layers  # every decoding step, every layer
    assert len(calls) == 6 * layers  # and the prefill
    prefill_rows = calls[:layers]  # the edited rows of each layer at prefill
    if method == "pai":
        assert prefill_rows == [1] * layers  # the prompt's last row
    else:
        assert min(prefill_rows) > 1  # every row after the images
    assert torch.equal(fused.sequences, base.sequences)
    for a, b in zip(fused.logits, base.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["pai", "var"])
def test_static_cache_generation_with_the_kernel_equals_the_bias_path(method, monkeypatch):
    """A static cache hands the kernel cache-wide keys and 4-D masks, at prefill and while decoding."""
    model, processor = tiny_llava()
    runs = {}
    for setting in ("off", "on"):
        method_config = lg.PAI(alpha=0.8, gamma=None) if method == "pai" else _sinky_var(model)
        guard = lg.attach(model, processor, [method_config], paths=lg.FastPaths(decode_kernel=setting))
        runs[setting] = guard.generate(IMAGES, PROMPTS, max_new_tokens=5, cache_implementation="static")
        guard.detach()
    assert runs["on"].token_ids == runs["off"].token_ids


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [AMPLIFY, REDISTRIBUTE])
def test_kernel_at_llava_7b_head_shapes_eager_and_compiled(mode):
    """bf16 at 32 heads x 128 dims over 700 keys (static-cache slots masked), eager launch and
    the `triton_op` that a compiled decode traces, against the float64 references."""
    heads, d, k_len, prompt = 32, 128, 700, 640
    gen = torch.Generator().manual_seed(mode)
    q = torch.randn(2, heads, 1, d, generator=gen).cuda().bfloat16()
    k = torch.randn(2, heads, k_len, d, generator=gen).cuda().bfloat16()
    v = torch.randn(2, heads, k_len, d, generator=gen).cuda().bfloat16()
    allowed = torch.ones(2, 1, 1, k_len, dtype=torch.bool, device="cuda")
    allowed[1, ..., :30] = False
    allowed[..., 660:] = False
    image = torch.zeros(2, k_len, dtype=torch.bool, device="cuda")
    image[:, 35:611] = True
    sinks = torch.zeros(2, prompt, dtype=torch.bool, device="cuda")
    sinks[:, [0, 30, 100, 101, 300]] = True
    spec = DecodeKernel(mode, alpha=0.5, p=0.6, rho=1.0, summ=0.0)
    run = lambda q, k, v, splits=None: decode_attention(q, k, v, allowed, image, spec, sinks, d**-0.5, splits)  # noqa: E731
    eager = run(q, k, v)  # one launch
    eager_split = run(q, k, v, 0)
    compiled = torch.compile(run, fullgraph=True)(q, k, v)  # split keys, then the combining kernel
    if mode == AMPLIFY:
        ref = _pai_reference(q, k, v, allowed, image, 0.5)
    else:
        ref = _var_reference(q, k, v, allowed, image, sinks, 0.6, 1.0, 0.0)
    torch.testing.assert_close(eager.transpose(1, 2).double(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(eager_split.transpose(1, 2).double(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(compiled.transpose(1, 2).double(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [AMPLIFY, REDISTRIBUTE])
def test_prefill_rows_at_llava_7b_head_shapes(mode):
    """The last 40 prompt rows of a 660-token prompt in a 700-slot static cache, bf16, each row
    with its causal mask, the edit reaching all but sequence 1's first 5 rows; eager and compiled."""
    heads, d, k_len, written, rows = 32, 128, 700, 660, 40
    gen = torch.Generator().manual_seed(10 + mode)
    q = torch.randn(2, heads, rows, d, generator=gen).cuda().bfloat16()
    k = torch.randn(2, heads, k_len, d, generator=gen).cuda().bfloat16()
    v = torch.randn(2, heads, k_len, d, generator=gen).cuda().bfloat16()
    positions = torch.arange(written - rows, written, device="cuda")
    allowed = (torch.arange(k_len, device="cuda")[None, :] <= positions[:, None])[None, None].repeat(2, 1, 1, 1)
    allowed[1, ..., :30] = False  # left padding of sequence 1
    image = torch.zeros(2, k_len, dtype=torch.bool, device="cuda")
    image[:, 35:611] = True
    sinks = torch.zeros(2, written, dtype=torch.bool, device="cuda")
    sinks[:, [0, 30, 100, 101, 300]] = True
    apply = torch.ones(2, rows, dtype=torch.bool, device="cuda")
    apply[1, :5] = False
    spec = DecodeKernel(mode, alpha=0.5, p=0.6, rho=1.0, summ=0.0)
    run = lambda q: decode_attention(q, k, v, allowed, image, spec, sinks, d**-0.5, apply=apply)  # noqa: E731
    eager = run(q)
    compiled = torch.compile(run, fullgraph=True)(q)
    if mode == AMPLIFY:
        ref = _pai_reference(q, k, v, allowed, image, 0.5, apply)
    else:
        ref = _var_reference(q, k, v, allowed, image, sinks, 0.6, 1.0, 0.0, apply)
    torch.testing.assert_close(eager.transpose(1, 2).double(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(compiled.transpose(1, 2).double(), ref, rtol=2e-2, atol=2e-2)


def test_gradients_flow_through_the_bias_path_not_the_kernel(monkeypatch):
    """The kernel has no backward: a query that needs gradients takes the autograd path."""
    calls = []
    kernel_call = decode_kernel.decode_attention
    monkeypatch.setattr(attention.dk, "decode_attention", lambda *a, **kw: calls.append(1) or kernel_call(*a, **kw))
    q, k, v, allowed, image, _ = _inputs(6)
    state = GuardState()
    state.set_image_keys(image)
    layer = LayerAttention(0, [pai_edit(0.5)], state, H, paths=attention.FastPaths(decode_kernel="on"))
    plain = run(layer, q, k, v, allowed)
    assert len(calls) == 1 and plain.grad_fn is None
    q = q.clone().requires_grad_()
    out = run(layer, q, k, v, allowed)
    assert len(calls) == 1  # not called again
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), plain, rtol=1e-5, atol=1e-5)


def test_a_failing_kernel_in_auto_mode_warns_once_and_the_bias_path_serves(monkeypatch):
    """ "auto" is an optimisation: a GPU or Triton version the kernel cannot run on must not stop
    generation. ("on", the tests' setting, raises instead.)"""
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.8, gamma=None)])
    base = guard.generate(IMAGES, PROMPTS, max_new_tokens=4)
    attempts = []

    def broken(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(attention.dk, "decode_attention", broken)
    monkeypatch.setattr(attention.dk, "supports", lambda query, key: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # "auto" tries CUDA tensors only
    with pytest.warns(RuntimeWarning, match="no kernel for this GPU"):
        fallback = guard.generate(IMAGES, PROMPTS, max_new_tokens=4)
    monkeypatch.undo()
    guard.detach()
    assert attempts == [1]  # tried once, then left alone by this guard
    assert fallback.token_ids == base.token_ids and guard.kernel_health.failed
    monkeypatch.setattr(attention.dk, "decode_attention", broken)
    on = lg.attach(model, processor, [lg.PAI(alpha=0.8, gamma=None)], paths=lg.FastPaths(decode_kernel="on"))
    try:
        with pytest.raises(RuntimeError, match="no kernel"):  # "on" raises
            on.generate(IMAGES, PROMPTS, max_new_tokens=2)
    finally:
        on.detach()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [AMPLIFY, REDISTRIBUTE])
def test_direct_launches_equal_tritons_own_as_a_dynamic_cache_grows(mode, monkeypatch):
    """Eager steps over 16 growing key lengths (every residue mod 16, a fresh cache tensor each
    step as a dynamic cache makes), masked and unmasked, bf16: the cached direct launch
    (`lvlm_guard.engine.kernels.triton_launch`) gives bit-identical outputs to Triton's own launch path."""
    from lvlm_guard.engine.kernels import triton_launch

    heads, d, prompt = 32, 128, 640
    gen = torch.Generator().manual_seed(20 + mode)
    spec = DecodeKernel(mode, alpha=0.5, p=0.6, rho=1.0, summ=0.0)
    sinks = torch.zeros(2, prompt, dtype=torch.bool, device="cuda")
    sinks[:, [0, 30, 100, 101, 300]] = True
    main_kernel = decode_kernel._EAGER_KERNELS[0]
    for k_len in range(prompt, prompt + 16):
        q = torch.randn(2, heads, 1, d, generator=gen).cuda().bfloat16()
        k = torch.randn(2, heads, k_len, d, generator=gen).cuda().bfloat16()
        v = torch.randn(2, heads, k_len, d, generator=gen).cuda().bfloat16()
        image = torch.zeros(2, k_len, dtype=torch.bool, device="cuda")
        image[:, 35:611] = True
        allowed = torch.ones(2, 1, 1, k_len, dtype=torch.bool, device="cuda")
        allowed[1, ..., :30] = False
        for mask in (allowed, None):
            outputs = []
            for enabled in (True, True, False):  # first call fills the cache, second launches directly
                monkeypatch.setattr(triton_launch, "ENABLED", enabled)
                outputs.append(decode_attention(q, k, v, mask, image, spec, sinks, d**-0.5))
            assert torch.equal(outputs[1], outputs[2]) and torch.equal(outputs[0], outputs[2])
    assert main_kernel.compiled and not main_kernel.failed


@pytest.mark.parametrize("mode", [AMPLIFY, REDISTRIBUTE])
def test_several_16_bit_rows_go_through_the_row_block_kernel(mode):
    """16-bit prefill rows (20: a full block of 16 and a partial one) take `_rows_attention_kernel`
    (matrix products over blocks of rows); against the float64 references and the per-row kernel.
    float16: Triton's CPU interpreter multiplies bfloat16 matrices wrongly (bf16 runs in the GPU
    test of prefill rows)."""
    q, k, v, allowed, image, sinks = _inputs(6, torch.float16)
    rows = 20
    q = (torch.randn(B, H, rows, D, generator=torch.Generator().manual_seed(7)) * 2).to(q)
    positions = torch.arange(K - rows, K)
    causal = torch.arange(K)[None, :] <= positions[:, None]
    allowed = (allowed[:, :, :1] & causal.to(allowed.device)[None, None]).contiguous()
    apply = torch.ones(B, rows, dtype=torch.bool, device=q.device)
    apply[1, :9] = False
    spec = DecodeKernel(mode, alpha=0.6, p=0.4, rho=1.0, summ=0.0)
    calls = []
    rows_kernel = decode_kernel._EAGER_KERNELS[2]
    original = type(rows_kernel).__call__

    def spy(self, grid, *args):
        calls.append((self is rows_kernel, grid))
        return original(self, grid, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(rows_kernel), "__call__", spy)
        out = decode_attention(q, k, v, allowed, image, spec, sinks, SCALING, apply=apply)
    assert calls == [(True, (B * H * 2, 1))]
    if mode == AMPLIFY:
        expected = _pai_reference(q, k, v, allowed, image, 0.6, apply)
    else:
        expected = _var_reference(q, k, v, allowed, image, sinks, 0.4, 1.0, 0.0, apply)
    torch.testing.assert_close(out.transpose(1, 2).double(), expected, rtol=2e-2, atol=2e-2)
    per_row = torch.cat(
        [decode_attention(q[:, :, i : i + 1], k, v, allowed[:, :, i : i + 1], image, spec, sinks, SCALING,
                          apply=apply[:, i : i + 1]) for i in range(rows)], dim=1,
    )  # fmt: skip
    torch.testing.assert_close(out.float(), per_row.float(), rtol=2e-2, atol=2e-2)


def test_constexprs_reach_each_kernel_in_its_parameter_order(monkeypatch):
    """A cached direct launch passes constexprs by position: the order `_launch` builds them in
    must be each kernel's parameter order (decode, split + combine, and row-block launches)."""
    from lvlm_guard.engine.kernels.triton_launch import CachedLaunch

    seen = []
    original = CachedLaunch.__call__

    def record(self, grid, tensors, ints, floats, constexprs, options):
        names = list(self.kernel.arg_names)
        assert names[-len(constexprs) :] == list(constexprs)
        assert len(names) == len(tensors) + len(ints) + len(floats) + len(constexprs)
        seen.append(names[0])
        return original(self, grid, tensors, ints, floats, constexprs, options)

    monkeypatch.setattr(CachedLaunch, "__call__", record)
    q, k, v, allowed, image, sinks = _inputs(8, torch.float16)
    spec = DecodeKernel(REDISTRIBUTE, p=0.5)
    decode_attention(q, k, v, allowed, image, spec, sinks, SCALING)
    decode_attention(q, k, v, allowed, image, spec, sinks, SCALING, 3)
    decode_attention(q.expand(B, H, 17, D), k, v, None, image, spec, sinks, SCALING)
    assert seen == ["Q", "Q", "OUT", "Q"]
