"""A fused Triton kernel for a guarded decoding step's attention (PAI's amplification, VAR's
redistribution).

Why: eager decoding of a 7B model is bound by kernel launches (~39 tok/s against ~130 compiled),
and the bias path costs PAI ~7 and VAR ~34 extra launches per edited layer
(results/var_vhr/README.md). Here the edited attention of one decoding step is one launch
(eager) or two (compiled: key splits, then a combining kernel); at prefill the edited rows (VAR's
rows after the image, PAI's last prompt row) are one launch written over the stock output, several
16-bit rows in blocks of 16 per (sequence, head) (`_rows_attention_kernel`: each key block read once
per block, not once per row). Each decoding program streams one (sequence, head, query row)'s keys
once, reading q, K, V and the image/sink/allowed masks directly:
PAI's online softmax of `s + alpha * |s|` on image keys, or VAR's online softmax with three key
groups kept apart (sinks, non-sink image keys, the rest).

Exactness: VAR's new weights are the old ones times one factor per group, chosen from the row's
group masses so that the row sum is kept (`lvlm_guard.methods.var`). With the groups' masses and
weighted value sums known, the output is `sum_g factor_g * acc_g / sum_g factor_g * mass_g`: the
same function as the bias path, in one pass over K and V. Partial sums of key splits merge
exactly (rescaled to a common maximum) before the factors are applied. Tests compare both modes
with float64 references (on CPU through Triton's interpreter, `TRITON_INTERPRET=1`).

Under `torch.compile` the launch goes through a `torch.library.triton_op`, so the compiled
static-cache decode captures it in its CUDA graph. Measured on the H200:
results/decode_kernel/README.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from lvlm_guard.engine.kernels.triton_launch import CachedLaunch

AMPLIFY = 0  # PAI: s -> s + alpha * |s| on image keys
REDISTRIBUTE = 1  # VAR: sinks x p, freed mass to non-sink image keys, in selected rows
BLOCK_KEYS = 128  # scripts/sweep_decode_kernel.py on the H200: 128 beat 32 and 64 at batch 1 and 8
#: `_rows_attention_kernel` (several rows of 16-bit q/k/v): rows and keys per block (tl.dot needs >= 16)
ROWS_BLOCK = 16
ROWS_BLOCK_KEYS = 64


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


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


TRITON_AVAILABLE = _triton_importable()


# Module level: Triton resolves a kernel's helpers through its globals. Interpreted on CPU when
# `TRITON_INTERPRET=1` was set before Triton's import (the tests' conftest.py does).
if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _key_block(q, k_base, img_row, allowed_row, sink_row, start, n_keys, n_sink_keys,
                  s_kn, s_kd, s_in, s_an, s_sn,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HAS_ALLOWED: tl.constexpr):  # fmt: skip
        """One block of keys: their scaled scores, validity, image and sink flags, indices."""
        n = start + tl.arange(0, BLOCK_N)
        d = tl.arange(0, HEAD_DIM)
        inside = n < n_keys
        valid = inside
        if HAS_ALLOWED:
            valid = valid & (tl.load(allowed_row + n * s_an, mask=inside, other=0) != 0)
        k = tl.load(k_base + n[:, None] * s_kn + d[None, :] * s_kd, mask=valid[:, None], other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        image = tl.load(img_row + n * s_in, mask=inside, other=0) != 0
        sink = tl.load(sink_row + n * s_sn, mask=n < n_sink_keys, other=0) != 0
        return n, valid, s, image, sink

    @triton.jit
    def _groups(w, image, sink, AXIS: tl.constexpr):
        """A key block's weights split into VAR's groups (the rest, sinks, free image keys) and the
        block's masses of text sinks, free image keys and visual sinks, summed over `AXIS` (the
        keys). `image` and `sink` broadcast against `w`: one row's `[keys]` or a block of rows'."""
        w_sink = tl.where(sink, w, 0.0)
        w_free = tl.where(image & ~sink, w, 0.0)
        text_sinks = tl.sum(tl.where(image, 0.0, w_sink), axis=AXIS)
        visual_sinks = tl.sum(tl.where(image, w_sink, 0.0), axis=AXIS)
        return w - w_sink - w_free, w_sink, w_free, text_sinks, tl.sum(w_free, axis=AXIS), visual_sinks

    @triton.jit
    def _finish(rest, text_sinks, free, visual_sinks, acc_rest, acc_sink, acc_free, p, rho, summ,
                MODE: tl.constexpr):  # fmt: skip
        """The output row from its group sums (all relative to one running maximum).

        AMPLIFY keeps every key in `rest`. REDISTRIBUTE: VAR's selection and factors from the
        group masses, then sinks x `p` and free image keys x `gain` (the row sum is unchanged)."""
        if MODE == 0:
            return acc_rest / rest
        image_mass = visual_sinks + free
        sink_mass = visual_sinks + text_sinks
        total = rest + sink_mass + free
        selected = (visual_sinks <= rho * image_mass) & (image_mass >= summ * total) & (free > 0)
        sink_factor = tl.where(selected, p, 1.0)
        gain = tl.where(selected, 1.0 + (1.0 - p) * sink_mass / tl.maximum(free, 1e-30), 1.0)
        numerator = acc_rest + sink_factor * acc_sink + gain * acc_free
        return numerator / (rest + sink_factor * sink_mass + gain * free)

    @triton.jit
    def _row_p(p, APPLY, b, r, s_pb, s_pr, HAS_APPLY: tl.constexpr):
        """VAR's sink share `p` for this query row: 1 (no redistribution) where the edit does not reach."""
        p = tl.cast(p, tl.float32)
        if HAS_APPLY:
            p = tl.where(tl.load(APPLY + b * s_pb + r * s_pr) != 0, p, 1.0)
        return p

    @triton.jit
    def _decode_attention_kernel(
        Q, K, V, OUT, IMG, ALLOWED, SINKS, APPLY, PART_MAX, PART_MASS, PART_ACC,
        s_qb, s_qh, s_qr, s_qd,
        s_kb, s_kh, s_kn, s_kd,
        s_vb, s_vh, s_vn, s_vd,
        s_ob, s_or, s_oh, s_od,
        s_ib, s_in, s_ab, s_ar, s_an, s_sb, s_sn, s_pb, s_pr,
        n_rows, n_keys, n_sink_keys, keys_per_split, group, scaling, alpha, p, rho, summ,
        HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
        MODE: tl.constexpr, HAS_ALLOWED: tl.constexpr, HAS_APPLY: tl.constexpr, FINAL: tl.constexpr,
        DOT_VALUES: tl.constexpr,
    ):  # fmt: skip
        """One (sequence, head, query row) over one split of its keys, in a single pass: online
        softmax, with VAR's three key groups (sinks, free image keys, the rest) kept apart so
        their factors can be applied once the row's masses are known. FINAL: the only split,
        write the output; else write the split's partial sums for `_combine_kernel`.
        DOT_VALUES: the groups' weighted value sums as one `[16, keys] @ [keys, d]` matrix product
        (tensor cores; rows 0-2 used, weights in the values' dtype as flash attention does)
        instead of three reductions over the key block."""
        pid = tl.program_id(0)
        split = tl.program_id(1)
        r = pid % n_rows
        h = (pid // n_rows) % HEADS
        b = pid // (n_rows * HEADS)
        kv = h // group
        # scalars as float32: torch.compile passes Python floats as float64
        scaling = tl.cast(scaling, tl.float32)
        alpha = tl.cast(alpha, tl.float32)
        if HAS_APPLY:  # a row the edit does not reach: plain attention
            alpha = tl.where(tl.load(APPLY + b * s_pb + r * s_pr) != 0, alpha, 0.0)
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * s_qb + h * s_qh + r * s_qr + d * s_qd).to(tl.float32) * scaling
        img_row = IMG + b * s_ib
        allowed_row = ALLOWED + b * s_ab + r * s_ar
        sink_row = SINKS + b * s_sb
        k_base = K + b * s_kb + kv * s_kh
        v_base = V + b * s_vb + kv * s_vh
        zero = tl.sum(tl.zeros([BLOCK_N], dtype=tl.float32), axis=0)  # 0-d float32 loop carriers
        m = zero - float("inf")
        rest = zero  # masses; AMPLIFY keeps every key in `rest`
        text_sinks = zero
        free = zero  # non-sink image keys, summed directly (I - Vs cancels when sinks dominate)
        visual_sinks = zero
        acc_rest = tl.zeros([HEAD_DIM], dtype=tl.float32)
        acc_sink = tl.zeros([HEAD_DIM], dtype=tl.float32)
        acc_free = tl.zeros([HEAD_DIM], dtype=tl.float32)
        group_row = tl.arange(0, 16)[:, None]  # DOT_VALUES: 0 rest, 1 sinks, 2 free image keys
        acc_groups = tl.zeros([16, HEAD_DIM], dtype=tl.float32)
        first = split * keys_per_split
        last = tl.minimum(first + keys_per_split, n_keys)
        for start in range(first, last, BLOCK_N):
            n, valid, s, image, sink = _key_block(
                q, k_base, img_row, allowed_row, sink_row, start, last, n_sink_keys,
                s_kn, s_kd, s_in, s_an, s_sn, HEAD_DIM, BLOCK_N, HAS_ALLOWED,
            )  # fmt: skip
            if MODE == 0:
                s = tl.where(image, s + alpha * tl.abs(s), s)
            s = tl.where(valid, s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            correction = tl.exp(m - m_safe)
            w = tl.exp(s - m_safe)
            v = tl.load(v_base + n[:, None] * s_vn + d[None, :] * s_vd, mask=valid[:, None], other=0.0)
            if MODE == 0:
                w_rest = w
                w_sink = tl.zeros([BLOCK_N], dtype=tl.float32)
                w_free = w_sink
            else:
                w_rest, w_sink, w_free, block_text, block_free, block_visual = _groups(w, image, sink, 0)
                text_sinks = text_sinks * correction + block_text
                free = free * correction + block_free
                visual_sinks = visual_sinks * correction + block_visual
            rest = rest * correction + tl.sum(w_rest, axis=0)
            if DOT_VALUES:
                weights = tl.where(group_row == 0, w_rest[None, :], 0.0)
                if MODE == 1:
                    weights = tl.where(group_row == 1, w_sink[None, :], weights)
                    weights = tl.where(group_row == 2, w_free[None, :], weights)
                acc_groups = acc_groups * correction + tl.dot(weights.to(v.dtype), v)
            else:
                v = v.to(tl.float32)
                acc_rest = acc_rest * correction + tl.sum(w_rest[:, None] * v, axis=0)
                if MODE == 1:
                    acc_sink = acc_sink * correction + tl.sum(w_sink[:, None] * v, axis=0)
                    acc_free = acc_free * correction + tl.sum(w_free[:, None] * v, axis=0)
            m = m_new
        if DOT_VALUES:
            acc_rest = tl.sum(tl.where(group_row == 0, acc_groups, 0.0), axis=0)
            acc_sink = tl.sum(tl.where(group_row == 1, acc_groups, 0.0), axis=0)
            acc_free = tl.sum(tl.where(group_row == 2, acc_groups, 0.0), axis=0)
        if FINAL:
            p = _row_p(p, APPLY, b, r, s_pb, s_pr, HAS_APPLY)
            out = _finish(rest, text_sinks, free, visual_sinks, acc_rest, acc_sink, acc_free,
                          p, tl.cast(rho, tl.float32), tl.cast(summ, tl.float32), MODE)  # fmt: skip
            tl.store(OUT + b * s_ob + r * s_or + h * s_oh + d * s_od, out.to(OUT.dtype.element_ty))
        else:
            row = pid * tl.num_programs(1) + split
            tl.store(PART_MAX + row, m)
            tl.store(PART_MASS + row * 4 + 0, rest)
            tl.store(PART_MASS + row * 4 + 1, text_sinks)
            tl.store(PART_MASS + row * 4 + 2, free)
            tl.store(PART_MASS + row * 4 + 3, visual_sinks)
            tl.store(PART_ACC + (row * 3 + 0) * HEAD_DIM + d, acc_rest)
            tl.store(PART_ACC + (row * 3 + 1) * HEAD_DIM + d, acc_sink)
            tl.store(PART_ACC + (row * 3 + 2) * HEAD_DIM + d, acc_free)

    @triton.jit
    def _rows_attention_kernel(
        Q, K, V, OUT, IMG, ALLOWED, SINKS, APPLY,
        s_qb, s_qh, s_qr, s_qd,
        s_kb, s_kh, s_kn, s_kd,
        s_vb, s_vh, s_vn, s_vd,
        s_ob, s_or, s_oh, s_od,
        s_ib, s_in, s_ab, s_ar, s_an, s_sb, s_sn, s_pb, s_pr,
        n_rows, n_keys, n_sink_keys, group, scaling, alpha, p, rho, summ,
        HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
        MODE: tl.constexpr, HAS_ALLOWED: tl.constexpr, HAS_APPLY: tl.constexpr,
    ):  # fmt: skip
        """BLOCK_R query rows of one (sequence, head) at once: a prefill's edited rows.

        The same online softmax and key groups as `_decode_attention_kernel`, but each key block is
        read once for all BLOCK_R rows and scored and summed by matrix products (tensor cores, as
        flash attention does: scores accumulate in float32, weights meet the values in their
        16-bit dtype). Per row, K and V were read once per row: VAR's ~40 rows after the image
        made its prefill 1.3x plain's at batch 8."""
        pid = tl.program_id(0)
        row_blocks = tl.cdiv(n_rows, BLOCK_R)
        h = (pid // row_blocks) % HEADS
        b = pid // (row_blocks * HEADS)
        kv = h // group
        r = (pid % row_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_in = r < n_rows
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * s_qb + h * s_qh + r[:, None] * s_qr + d[None, :] * s_qd, mask=row_in[:, None], other=0.0)
        scaling = tl.cast(scaling, tl.float32)
        reach = row_in
        if HAS_APPLY:  # rows the edit does not reach: plain attention
            reach = tl.load(APPLY + b * s_pb + r * s_pr, mask=row_in, other=0) != 0
        alpha = tl.where(reach, tl.cast(alpha, tl.float32), 0.0)
        zero = tl.zeros([BLOCK_R], dtype=tl.float32)
        m = zero - float("inf")
        rest = zero
        text_sinks = zero
        free = zero
        visual_sinks = zero
        acc_rest = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
        acc_sink = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
        acc_free = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
        k_base = K + b * s_kb + kv * s_kh
        v_base = V + b * s_vb + kv * s_vh
        for start in range(0, n_keys, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            inside = n < n_keys
            valid = row_in[:, None] & inside[None, :]
            if HAS_ALLOWED:
                allowed = tl.load(ALLOWED + b * s_ab + r[:, None] * s_ar + n[None, :] * s_an, mask=valid, other=0)
                valid = valid & (allowed != 0)
            k = tl.load(k_base + n[:, None] * s_kn + d[None, :] * s_kd, mask=inside[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scaling  # [rows, keys]
            image = tl.load(IMG + b * s_ib + n * s_in, mask=inside, other=0) != 0
            if MODE == 0:
                s = tl.where(image[None, :], s + alpha[:, None] * tl.abs(s), s)
            s = tl.where(valid, s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            correction = tl.exp(m - m_safe)
            w = tl.exp(s - m_safe[:, None])
            v = tl.load(v_base + n[:, None] * s_vn + d[None, :] * s_vd, mask=inside[:, None], other=0.0)
            if MODE == 0:
                w_rest = w
            else:
                sink = tl.load(SINKS + b * s_sb + n * s_sn, mask=n < n_sink_keys, other=0) != 0
                w_rest, w_sink, w_free, block_text, block_free, block_visual = _groups(
                    w, image[None, :], sink[None, :], 1
                )
                text_sinks = text_sinks * correction + block_text
                free = free * correction + block_free
                visual_sinks = visual_sinks * correction + block_visual
                acc_sink = acc_sink * correction[:, None] + tl.dot(w_sink.to(v.dtype), v)
                acc_free = acc_free * correction[:, None] + tl.dot(w_free.to(v.dtype), v)
            rest = rest * correction + tl.sum(w_rest, axis=1)
            acc_rest = acc_rest * correction[:, None] + tl.dot(w_rest.to(v.dtype), v)
            m = m_new
        p = tl.where(reach, tl.cast(p, tl.float32), 1.0)
        rest = tl.where(row_in, rest, 1.0)  # rows past the end (never stored): no 0 / 0
        out = _finish(rest[:, None], text_sinks[:, None], free[:, None], visual_sinks[:, None], acc_rest, acc_sink,
                      acc_free, p[:, None], tl.cast(rho, tl.float32), tl.cast(summ, tl.float32), MODE)  # fmt: skip
        out_rows = OUT + b * s_ob + r[:, None] * s_or + h * s_oh + d[None, :] * s_od
        tl.store(out_rows, out.to(OUT.dtype.element_ty), mask=row_in[:, None])

    @triton.jit
    def _combine_kernel(
        OUT, APPLY, PART_MAX, PART_MASS, PART_ACC, s_ob, s_or, s_oh, s_od, s_pb, s_pr,
        n_rows, n_splits, p, rho, summ,
        HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, MODE: tl.constexpr,
        HAS_APPLY: tl.constexpr,
    ):  # fmt: skip
        """Merge one row's split partial sums onto their common maximum and write the output."""
        pid = tl.program_id(0)
        r = pid % n_rows
        h = (pid // n_rows) % HEADS
        b = pid // (n_rows * HEADS)
        d = tl.arange(0, HEAD_DIM)
        splits = tl.arange(0, SPLITS)
        inside = splits < n_splits
        rows = pid * n_splits + splits
        m = tl.load(PART_MAX + rows, mask=inside, other=-float("inf"))
        top = tl.max(m, axis=0)
        scale = tl.where(m == -float("inf"), 0.0, tl.exp(m - tl.where(top == -float("inf"), 0.0, top)))
        rest = tl.sum(scale * tl.load(PART_MASS + rows * 4 + 0, mask=inside, other=0.0), axis=0)
        text_sinks = tl.sum(scale * tl.load(PART_MASS + rows * 4 + 1, mask=inside, other=0.0), axis=0)
        free = tl.sum(scale * tl.load(PART_MASS + rows * 4 + 2, mask=inside, other=0.0), axis=0)
        visual_sinks = tl.sum(scale * tl.load(PART_MASS + rows * 4 + 3, mask=inside, other=0.0), axis=0)
        acc = PART_ACC + (rows[:, None] * 3) * HEAD_DIM + d[None, :]
        acc_rest = tl.sum(scale[:, None] * tl.load(acc, mask=inside[:, None], other=0.0), axis=0)
        acc_sink = tl.sum(scale[:, None] * tl.load(acc + HEAD_DIM, mask=inside[:, None], other=0.0), axis=0)
        acc_free = tl.sum(scale[:, None] * tl.load(acc + 2 * HEAD_DIM, mask=inside[:, None], other=0.0), axis=0)
        p = _row_p(p, APPLY, b, r, s_pb, s_pr, HAS_APPLY)
        out = _finish(rest, text_sinks, free, visual_sinks, acc_rest, acc_sink, acc_free,
                      p, tl.cast(rho, tl.float32), tl.cast(summ, tl.float32), MODE)  # fmt: skip
        tl.store(OUT + b * s_ob + r * s_or + h * s_oh + d * s_od, out.to(OUT.dtype.element_ty))


#: split a row's keys over several programs until about this many run. H200 sweep
#: (results/decode_kernel/sweep_h200.json, 685 keys): batch 1 (32 rows) 16.7 us unsplit,
#: 7.4 us in 6 splits; batch 8 (256 rows) 31.1 us unsplit, 37.5 in 2 splits: split below 256 rows
TARGET_PROGRAMS = 256
#: Triton launch options of the main kernel (e.g. `num_warps`); empty: Triton's defaults.
#: `scripts/sweep_decode_kernel.py` times the alternatives.
LAUNCH_OPTIONS: dict = {}
#: weighted value sums through `tl.dot` (tensor cores) instead of reductions: an alternative the
#: sweep measures (not yet run on a GPU; off until it is)
DOT_VALUES = False


def key_splits(rows: int, n_keys: int) -> tuple[int, int]:
    """`(splits, keys_per_split)`: enough programs to fill the GPU, whole key blocks per split.

    At batch 1 a 7B model has 32 rows (sequence x head) per layer: one program per row streams
    ~700 keys through a few SMs; split, the reads spread over the whole GPU."""
    blocks = -(-n_keys // BLOCK_KEYS)
    splits = max(1, min(TARGET_PROGRAMS // rows, blocks))
    keys_per_split = -(-blocks // splits) * BLOCK_KEYS
    return -(-n_keys // keys_per_split), keys_per_split


def _run(kernel, grid, tensors, ints, floats, constexprs, options) -> None:
    """One launch: through `CachedLaunch` (eager) or the kernel's own `[grid]` (`wrap_triton`)."""
    if isinstance(kernel, CachedLaunch):
        kernel(grid, tensors, ints, floats, constexprs, options)
    else:
        kernel[grid](*tensors, *ints, *floats, **constexprs, **options)


def _launch(kernels, query, key, value, allowed, image_keys, sinks, apply, scaling, mode, alpha, p, rho, summ, splits):
    """Run the kernels (the jitted ones, or their `wrap_triton` forms under compile) over
    `splits` key splits (0: `key_splits`' choice); returns `[b, r, h, d]`."""
    main_kernel, combine_kernel, rows_kernel = kernels
    b, heads, n_rows, head_dim = query.shape
    rows = b * heads * n_rows
    out = torch.empty(b, n_rows, heads, head_dim, dtype=query.dtype, device=query.device)
    n_keys = key.shape[2]
    splits, keys_per_split = key_splits(rows, n_keys) if splits == 0 else (splits, -(-n_keys // splits))
    final = splits == 1
    if final:  # no partial sums: `out` stands in for the never-touched buffers
        part_max = part_mass = part_acc = out
    else:
        part_max = torch.empty(rows * splits, dtype=torch.float32, device=query.device)
        part_mass = torch.empty(rows * splits * 4, dtype=torch.float32, device=query.device)
        part_acc = torch.empty(rows * splits * 3 * head_dim, dtype=torch.float32, device=query.device)
    allowed_strides = (0, 0, 0)
    if allowed is not None:  # `[b|1, r, k]`: one mask row shared by the batch gets stride 0
        allowed_strides = (allowed.stride(0) if allowed.shape[0] > 1 else 0, allowed.stride(1), allowed.stride(2))
    apply_arg = apply if apply is not None else image_keys
    # stand-ins for absent masks (never read): the image mask
    tensors = (
        query, key, value, out, image_keys, allowed if allowed is not None else image_keys,
        sinks if sinks is not None else image_keys, apply_arg,
    )  # fmt: skip
    strides = (
        *query.stride(), *key.stride(), *value.stride(), *out.stride(), *image_keys.stride(), *allowed_strides,
        *tensors[6].stride(), *apply_arg.stride(),
    )  # fmt: skip
    n_sink_keys = sinks.shape[1] if sinks is not None else 0
    group = heads // key.shape[1]
    floats = (scaling, alpha, p, rho, summ)
    flags = {"MODE": mode, "HAS_ALLOWED": allowed is not None, "HAS_APPLY": apply is not None}
    if n_rows > 1 and final and query.dtype in (torch.bfloat16, torch.float16) and head_dim >= 16:
        constexprs = {"HEADS": heads, "HEAD_DIM": head_dim, "BLOCK_N": ROWS_BLOCK_KEYS, "BLOCK_R": ROWS_BLOCK, **flags}
        grid = (b * heads * -(-n_rows // ROWS_BLOCK), 1)
        _run(rows_kernel, grid, tensors, (*strides, n_rows, n_keys, n_sink_keys, group), floats, constexprs, {})
        return out
    tensors = (*tensors, part_max, part_mass, part_acc)
    ints = (*strides, n_rows, n_keys, n_sink_keys, keys_per_split, group)
    constexprs = {
        "HEADS": heads,
        "HEAD_DIM": head_dim,
        "BLOCK_N": BLOCK_KEYS,
        **flags,
        "FINAL": final,
        "DOT_VALUES": DOT_VALUES,
    }
    _run(main_kernel, (rows, splits), tensors, ints, floats, constexprs, LAUNCH_OPTIONS)
    if not final:
        tensors = (out, apply_arg, part_max, part_mass, part_acc)
        ints = (*out.stride(), *apply_arg.stride(), n_rows, splits)
        constexprs = {
            "HEADS": heads, "HEAD_DIM": head_dim, "SPLITS": triton.next_power_of_2(splits), "MODE": mode,
            "HAS_APPLY": apply is not None,
        }  # fmt: skip
        _run(combine_kernel, (rows, 1), tensors, ints, (p, rho, summ), constexprs, {})
    return out


def _register_op():
    """The kernels as a custom op that `torch.compile` can trace into a CUDA graph."""
    from torch.library import triton_op, wrap_triton

    @triton_op("lvlm_guard::decode_attention", mutates_args={})
    def decode_attention_op(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        allowed: torch.Tensor | None,
        image_keys: torch.Tensor,
        sinks: torch.Tensor | None,
        apply: torch.Tensor | None,
        scaling: float,
        mode: int,
        alpha: float,
        p: float,
        rho: float,
        summ: float,
        splits: int,
    ) -> torch.Tensor:
        kernels = (
            wrap_triton(_decode_attention_kernel),
            wrap_triton(_combine_kernel),
            wrap_triton(_rows_attention_kernel),
        )
        return _launch(
            kernels, query, key, value, allowed, image_keys, sinks, apply, scaling, mode, alpha, p, rho, summ, splits
        )

    return decode_attention_op


def supports(query: torch.Tensor, key: torch.Tensor) -> bool:
    """The kernel's shape limits: a power-of-two head dim up to 256, at least one key."""
    head_dim = query.shape[-1]
    return head_dim & (head_dim - 1) == 0 and head_dim <= 256 and key.shape[2] > 0


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    image_keys: torch.Tensor,
    spec: DecodeKernel,
    sinks: torch.Tensor | None,
    scaling: float,
    splits: int | None = None,
    apply: torch.Tensor | None = None,
) -> torch.Tensor:
    """Edited attention of a few query rows: one decoding step, or the rows a prefill edits.

    q `[b, h, r, d]`, k/v `[b, kv_h, k, d]`, allowed `[b|1, 1, r, k]` bool or None (every key),
    image_keys `[b, k]` bool, sinks `[b, prompt_len]` bool or None, apply `[b, r]` bool or None:
    the rows the edit reaches (the others get plain attention). Returns `[b, r, h, d]`
    (transformers' attention-output layout).

    `splits` of each row's keys: None = one launch in eager code (eager decoding is bound by the
    host, a second launch costs more than it saves) and `key_splits`' choice under compile
    (a CUDA graph launches for free, the GPU's time is what counts); 0 = `key_splits`' choice."""
    compiling = torch.compiler.is_compiling()
    args = (
        query,
        key,
        value,
        allowed[:, 0] if allowed is not None else None,
        image_keys,
        sinks,
        apply,
        float(scaling),
        spec.mode,
        float(spec.alpha),
        float(spec.p),
        float(spec.rho),
        float(spec.summ),
        (0 if compiling else 1) if splits is None else splits,
    )
    if compiling:
        return torch.ops.lvlm_guard.decode_attention(*args)
    return _launch(_EAGER_KERNELS, *args)


if TRITON_AVAILABLE:
    _EAGER_KERNELS = tuple(map(CachedLaunch, (_decode_attention_kernel, _combine_kernel, _rows_attention_kernel)))
    try:  # registered at import: registering a custom op while dynamo traces is not allowed
        _register_op()
    except Exception as error:  # an older torch/Triton pair: keep the library importable
        warnings.warn(f"lvlm_guard: the decode kernel's custom op is unavailable ({error!r})", stacklevel=1)
