"""One decoding step's attention at LLaVA-1.5-7B shapes, in isolation: which kernel serves PAI best.

For batch sizes 1..8 and a static-cache-sized key length, times (CUDA events, median of many
calls, each variant compiled as the static-cache decode would compile it):
  - `sdpa`: what the plain model runs (SDPA with the boolean cache mask);
  - `sdpa_bias`: PAI as an additive bias (q.K^T, `alpha*|s|`, SDPA with a float mask): K read twice;
  - `flex_mask`: FlexAttention with the mask only (the fused kernel's own cost);
  - `flex_pai`: FlexAttention with PAI's score_mod (one pass over K), with several kernel options;
  - `triton_pai`, `triton_var`: our fused decoding kernel (`lvlm_guard.engine.kernels.decode_kernel`) in its
    AMPLIFY and REDISTRIBUTE modes, through the `triton_op` a compiled decode traces.
Times are kernel times (CUDA-graph replay), microseconds. Eager decoding pays the Python side too:
`eager_*` rows time one eager call of the plain SDPA, the bias path and the Triton launch
(host wall clock, synchronised, median); `host_*` rows time calls issued back to back (one sync
per 100), which is the host's cost of a call where, as in eager decoding, the kernel is shorter
than its launch; `triton_pai_jitlaunch` launches through Triton's own path every time (no
`lvlm_guard.engine.kernels.triton_launch` cache). Writes JSON to --out.

    python scripts/bench_decode_attention.py --out results/bench_decode_attention.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from lvlm_guard.engine import attention_math as am
from lvlm_guard.engine.kernels import decode_kernel as dk
from lvlm_guard.engine.kernels import triton_launch

HEADS, HEAD_DIM, IMAGE = 32, 128, (5, 581)


def amplified(score, weight):
    return score + weight * score.abs()


def variants(options_list):
    scale = HEAD_DIM**-0.5

    def sdpa(q, k, v, allowed, weights, image, sinks):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)

    def sdpa_bias(q, k, v, allowed, weights, image, sinks):
        s = torch.matmul(q, k.transpose(-1, -2)).float() * scale
        bias = (amplified(s, weights[:, None, None, :]) - s).to(q.dtype)
        bias = bias.masked_fill(~allowed, torch.finfo(q.dtype).min)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    def flex(options, mods):
        def run(q, k, v, allowed, weights, image, sinks):
            previous = am.FLEX_KERNEL_OPTIONS
            am.FLEX_KERNEL_OPTIONS = options
            try:
                return am.attend_with_score_mods(q, k, v, allowed, [(fn, weights) for fn in mods], scale)
            finally:
                am.FLEX_KERNEL_OPTIONS = previous

        return run

    def triton(spec):
        def run(q, k, v, allowed, weights, image, sinks):
            return dk.decode_attention(q, k, v, allowed, image, spec, sinks, scale)

        return run

    found = {
        "sdpa": sdpa,
        "sdpa_bias": sdpa_bias,
        "triton_pai": triton(dk.DecodeKernel(dk.AMPLIFY, alpha=0.2)),
        "triton_var": triton(dk.DecodeKernel(dk.REDISTRIBUTE, p=0.6, rho=0.5, summ=0.2)),
        "flex_mask": flex(None, []),
    }
    for options in options_list:
        found[f"flex_pai{json.dumps(options, sort_keys=True) if options else ''}"] = flex(options, [amplified])
    return found


def decode_inputs(batch: int, key_len: int) -> tuple[torch.Tensor, ...]:
    """One decoding step's attention inputs on the GPU: q, k, v, allowed `[b, 1, 1, k]`, PAI's
    weights `[b, k]`, image `[b, k]`, sinks `[b, prompt]` (BOS and the first image token)."""
    g = torch.Generator(device="cuda").manual_seed(batch)
    q = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(batch, HEADS, key_len, HEAD_DIM, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    allowed = torch.zeros(batch, 1, 1, key_len, dtype=torch.bool, device="cuda")
    allowed[..., : key_len - 30] = True  # the cache slots written so far
    weights = torch.zeros(batch, key_len, device="cuda")
    weights[:, IMAGE[0] : IMAGE[1]] = 0.2
    image = weights > 0
    sinks = torch.zeros(batch, IMAGE[1], dtype=torch.bool, device="cuda")
    sinks[:, [0, IMAGE[0]]] = True
    return q, k, v, allowed, weights, image, sinks


def time_variant(fn, inputs, calls: int) -> float:
    """Median microseconds per call of the kernels alone: the calls are replayed from a CUDA graph,
    as the static-cache decode replays them, so Python dispatch does not hide the kernel time."""
    from triton.testing import do_bench_cudagraph

    compiled = torch.compile(fn, dynamic=False)
    for _ in range(5):
        compiled(*inputs)
    torch.cuda.synchronize()
    return do_bench_cudagraph(lambda: compiled(*inputs), rep=max(calls // 4, 20), return_mode="median") * 1000


def time_host(fn, inputs, calls: int, batch_calls: int) -> float:
    """Median microseconds per eager call, host side included, over batches of `batch_calls`
    back-to-back calls and one sync: 1 = one synchronised call (`eager_*` rows); 100 = the
    host-bound rate of eager decoding, where the kernel is shorter than its launch (`host_*`)."""
    import statistics
    import time

    for _ in range(10):
        fn(*inputs)
    torch.cuda.synchronize()
    per_call = []
    for _ in range(max(calls // batch_calls, 5)):
        start = time.perf_counter()
        for _ in range(batch_calls):
            fn(*inputs)
        torch.cuda.synchronize()
        per_call.append((time.perf_counter() - start) / batch_calls * 1e6)
    return statistics.median(per_call)


def jit_launched(fn):
    """`fn` with every Triton launch through `JITFunction.run` (the direct-launch cache off)."""

    def run(*inputs):
        previous, triton_launch.ENABLED = triton_launch.ENABLED, False
        try:
            return fn(*inputs)
        finally:
            triton_launch.ENABLED = previous

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--key-len", type=int, default=685, help="static cache: 621 prompt + 64 new tokens")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--only", nargs="+", help="time only these compiled variants (e.g. sdpa triton_pai)")
    parser.add_argument(
        "--options",
        type=json.loads,
        default=[None, {"BLOCK_N": 32}, {"BLOCK_N": 128}, {"num_warps": 8}, {"SPLIT_KV": 16}],
        help="JSON list of FlexAttention kernel_options dicts (null: defaults)",
    )
    args = parser.parse_args()
    torch._dynamo.config.cache_size_limit = 256
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "key_len": args.key_len, "rows": []}
    for batch in args.batch_sizes:
        inputs = decode_inputs(batch, args.key_len)
        row = {"batch": batch}
        for name, fn in variants(args.options).items():
            if args.only and name not in args.only:
                continue
            try:
                row[name] = time_variant(fn, inputs, args.calls)
            except Exception as error:  # an option the kernel rejects
                row[name] = repr(error)[:200]
            print(f"b{batch} {name:40s} {row[name]}", flush=True)
        eager = variants([])
        eager["triton_pai_jitlaunch"] = jit_launched(eager["triton_pai"])
        for name in ("sdpa", "sdpa_bias", "triton_pai", "triton_var"):
            row[f"eager_{name}"] = time_host(eager[name], inputs, args.calls, batch_calls=1)
            print(f"b{batch} eager_{name:34s} {row[f'eager_{name}']}", flush=True)
        for name in ("sdpa", "triton_pai", "triton_pai_jitlaunch", "triton_var"):
            row[f"host_{name}"] = time_host(eager[name], inputs, args.calls, batch_calls=100)
            print(f"b{batch} host_{name:35s} {row[f'host_{name}']}", flush=True)
        results["rows"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
