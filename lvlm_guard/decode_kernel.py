"""One fused Triton kernel for a guarded decoding step's attention (PAI's amplification, VAR's
redistribution).

Why: eager decoding of a 7B model is bound by kernel launches (~39 tok/s against ~130 compiled),
and the bias path costs PAI ~7 and VAR ~34 extra launches per edited layer
(evals/results/var_vhr/README.md). Here the whole edited attention of one decoding step is one
launch: one program per (sequence, head) streams the keys once (PAI: online softmax of
`s + alpha * |s|` on image keys) or twice (VAR: first the row's group masses, then the output with
each key's redistribution factor), reading q, K, V, and the image/sink/allowed masks directly.

Exactness: VAR's new weights are the old ones times a per-group factor that keeps the row sum
(`lvlm_guard.methods.var`), so the second pass accumulates `exp(s - m) * factor * v` and
normalises by the accumulated weight: the same function as the bias path, in one pass over V.
Tests compare both modes with float64 references (on CPU through Triton's interpreter,
`TRITON_INTERPRET=1`).

Under `torch.compile` the launch goes through a `torch.library.triton_op`, so the compiled
static-cache decode captures it in its CUDA graph.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import torch

AMPLIFY = 0  # PAI: s -> s + alpha * |s| on image keys
REDISTRIBUTE = 1  # VAR: sinks x p, freed mass to non-sink image keys, in selected rows
BLOCK_KEYS = 64


@dataclass(frozen=True)
class DecodeKernel:
    """An attention edit in the declarative form the fused decoding kernel executes.

    `mode` AMPLIFY uses `alpha`; REDISTRIBUTE uses `p`, `rho`, `summ` and the layer's sink tokens
    (`sinks(state, layer) -> [b, prompt_len] bool | None`).
    """

    mode: int
    alpha: float = 0.0
    p: float = 1.0
    rho: float = 1.0
    summ: float = 0.0
    sinks: object = None  # Callable[[GuardState, int], torch.Tensor | None]


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# Module level: Triton resolves a kernel's helpers through its globals. Interpreted on CPU when
# `TRITON_INTERPRET=1` was set before Triton's import (the tests' conftest.py does).
if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _key_block(q, k_base, IMG, ALLOWED, SINKS, b, start, n_keys, n_sink_keys,
                  s_kn, s_kd, s_ib, s_in, s_ab, s_an, s_sb, s_sn,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HAS_ALLOWED: tl.constexpr):  # fmt: skip
        """One block of keys: their scaled scores, validity, image and sink flags, indices."""
        n = start + tl.arange(0, BLOCK_N)
        d = tl.arange(0, HEAD_DIM)
        inside = n < n_keys
        valid = inside
        if HAS_ALLOWED:
            valid = valid & (tl.load(ALLOWED + b * s_ab + n * s_an, mask=inside, other=0) != 0)
        k = tl.load(k_base + n[:, None] * s_kn + d[None, :] * s_kd, mask=valid[:, None], other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        image = tl.load(IMG + b * s_ib + n * s_in, mask=inside, other=0) != 0
        sink = tl.load(SINKS + b * s_sb + n * s_sn, mask=n < n_sink_keys, other=0) != 0
        return n, valid, s, image, sink

    @triton.jit
    def _decode_attention_kernel(
        Q, K, V, OUT, IMG, ALLOWED, SINKS,
        s_qb, s_qh, s_qd,
        s_kb, s_kh, s_kn, s_kd,
        s_vb, s_vh, s_vn, s_vd,
        s_ob, s_oh, s_od,
        s_ib, s_in, s_ab, s_an, s_sb, s_sn,
        n_keys, n_sink_keys, group, scaling, alpha, p, rho, summ,
        HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
        MODE: tl.constexpr, HAS_ALLOWED: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        b = pid // HEADS
        h = pid % HEADS
        kv = h // group
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * s_qb + h * s_qh + d * s_qd).to(tl.float32) * scaling
        k_base = K + b * s_kb + kv * s_kh
        v_base = V + b * s_vb + kv * s_vh
        zero = tl.sum(tl.zeros([BLOCK_N], dtype=tl.float32), axis=0)  # 0-d float32 loop carriers
        m = zero - float("inf")
        total = zero
        image_mass = zero
        visual_sink_mass = zero
        sink_mass = zero
        free_mass = zero  # non-sink image keys, summed directly (I - Vs cancels when sinks dominate)
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        # pass 1: AMPLIFY computes the output (online softmax); REDISTRIBUTE the row's group masses
        for start in range(0, n_keys, BLOCK_N):
            n, valid, s, image, sink = _key_block(
                q, k_base, IMG, ALLOWED, SINKS, b, start, n_keys, n_sink_keys,
                s_kn, s_kd, s_ib, s_in, s_ab, s_an, s_sb, s_sn, HEAD_DIM, BLOCK_N, HAS_ALLOWED,
            )  # fmt: skip
            if MODE == 0:
                s = tl.where(image, s + alpha * tl.abs(s), s)
            s = tl.where(valid, s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            correction = tl.exp(m - m_safe)
            w = tl.exp(s - m_safe)
            total = total * correction + tl.sum(w, axis=0)
            if MODE == 0:
                v = tl.load(v_base + n[:, None] * s_vn + d[None, :] * s_vd, mask=valid[:, None], other=0.0)
                acc = acc * correction + tl.sum(w[:, None] * v.to(tl.float32), axis=0)
            else:
                image_mass = image_mass * correction + tl.sum(tl.where(image, w, 0.0), axis=0)
                visual_sink_mass = visual_sink_mass * correction + tl.sum(tl.where(image & sink, w, 0.0), axis=0)
                sink_mass = sink_mass * correction + tl.sum(tl.where(sink, w, 0.0), axis=0)
                free_mass = free_mass * correction + tl.sum(tl.where(image & ~sink, w, 0.0), axis=0)
            m = m_new
        if MODE == 1:
            # masses relative to the row (the common exp(-m) cancels); selection as in VAR
            selected = (visual_sink_mass <= rho * image_mass) & (image_mass >= summ * total) & (free_mass > 0)
            sink_factor = tl.where(selected, p, 1.0)
            gain = tl.where(selected, 1.0 + (1.0 - p) * sink_mass / tl.maximum(free_mass, 1e-30), 1.0)
            m_safe = tl.where(m == -float("inf"), 0.0, m)
            total = zero
            for start in range(0, n_keys, BLOCK_N):
                n, valid, s, image, sink = _key_block(
                    q, k_base, IMG, ALLOWED, SINKS, b, start, n_keys, n_sink_keys,
                    s_kn, s_kd, s_ib, s_in, s_ab, s_an, s_sb, s_sn, HEAD_DIM, BLOCK_N, HAS_ALLOWED,
                )  # fmt: skip
                factor = tl.where(sink, sink_factor, tl.where(image, gain, 1.0))
                w = tl.where(valid, tl.exp(s - m_safe) * factor, 0.0)
                v = tl.load(v_base + n[:, None] * s_vn + d[None, :] * s_vd, mask=valid[:, None], other=0.0)
                total += tl.sum(w, axis=0)
                acc += tl.sum(w[:, None] * v.to(tl.float32), axis=0)
        out = acc / total
        tl.store(OUT + b * s_ob + h * s_oh + d * s_od, out.to(OUT.dtype.element_ty))


def _launch(kernel, query, key, value, allowed, image_keys, sinks, scaling, mode, alpha, p, rho, summ):
    """Run `kernel` (the jitted one, or its `wrap_triton` form under compile); returns `[b, 1, h, d]`."""
    b, heads, _, head_dim = query.shape
    out = torch.empty(b, 1, heads, head_dim, dtype=query.dtype, device=query.device)
    n_keys = key.shape[2]
    has_allowed = allowed.numel() > 0
    allowed_arg = allowed if has_allowed else image_keys
    sinks_arg = sinks if sinks.numel() > 0 else image_keys
    kernel[(b * heads,)](
        query, key, value, out, image_keys, allowed_arg, sinks_arg,
        query.stride(0), query.stride(1), query.stride(3),
        key.stride(0), key.stride(1), key.stride(2), key.stride(3),
        value.stride(0), value.stride(1), value.stride(2), value.stride(3),
        out.stride(0), out.stride(2), out.stride(3),
        image_keys.stride(0), image_keys.stride(1),
        allowed_arg.stride(0) if allowed.shape[0] > 1 else 0, allowed_arg.stride(-1),
        sinks_arg.stride(0), sinks_arg.stride(1),
        n_keys, sinks.shape[1] if sinks.numel() > 0 else 0, heads // key.shape[1],
        scaling, alpha, p, rho, summ,
        HEADS=heads, HEAD_DIM=head_dim, BLOCK_N=BLOCK_KEYS, MODE=mode, HAS_ALLOWED=has_allowed,
    )  # fmt: skip
    return out


@cache
def _compiled_op():
    """The kernel as a custom op that `torch.compile` can trace into a CUDA graph."""
    from torch.library import triton_op, wrap_triton

    @triton_op("lvlm_guard::decode_attention", mutates_args={})
    def decode_attention_op(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        allowed: torch.Tensor,
        image_keys: torch.Tensor,
        sinks: torch.Tensor,
        scaling: float,
        mode: int,
        alpha: float,
        p: float,
        rho: float,
        summ: float,
    ) -> torch.Tensor:
        return _launch(
            wrap_triton(_decode_attention_kernel),
            query,
            key,
            value,
            allowed,
            image_keys,
            sinks,
            scaling,
            mode,
            alpha,
            p,
            rho,
            summ,
        )

    return decode_attention_op


def supports(query: torch.Tensor, key: torch.Tensor) -> bool:
    """The kernel's shape limits: one query row, a power-of-two head dim."""
    head_dim = query.shape[-1]
    return query.shape[2] == 1 and head_dim & (head_dim - 1) == 0 and head_dim <= 256 and key.shape[2] > 0


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    image_keys: torch.Tensor,
    spec: DecodeKernel,
    sinks: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Edited attention of one decoding step: q `[b, h, 1, d]`, k/v `[b, kv_h, k, d]`, allowed
    `[b|1, 1, 1, k]` bool or None, image_keys `[b, k]` bool, sinks `[b, prompt_len]` bool or None.
    Returns `[b, 1, h, d]` (transformers' attention-output layout)."""
    empty = image_keys.new_zeros((0, 0))
    allowed_2d = allowed[:, 0, 0] if allowed is not None else empty
    args = (
        query,
        key,
        value,
        allowed_2d,
        image_keys,
        sinks if sinks is not None else empty,
        float(scaling),
        spec.mode,
        float(spec.alpha),
        float(spec.p),
        float(spec.rho),
        float(spec.summ),
    )
    if torch.compiler.is_compiling():
        return _compiled_op()(*args)
    return _launch(_decode_attention_kernel, *args)


if triton_available():
    try:  # registered at import: registering a custom op while dynamo traces is not allowed
        _compiled_op()
    except Exception as error:  # an older torch/Triton pair: keep the library importable
        warnings.warn(f"lvlm_guard: the decode kernel's custom op is unavailable ({error!r})", stacklevel=1)
