"""GPU time of the fused decoding kernel (`lvlm_guard.engine.kernels.decode_kernel`) over its tuning knobs.

Each configuration is launched directly (no torch.compile) and replayed from a CUDA graph, as a
compiled static-cache decode replays it, next to SDPA on the same tensors (LLaVA-1.5-7B heads:
32 x 128, 685 keys). Knobs: key block; target program count (how far a row's keys are split;
0 = one program per row, no combining kernel); num_warps; value sums by `tl.dot` or by
reductions. Writes JSON rows as it goes.

    python scripts/sweep_decode_kernel.py --out results/decode_kernel/sweep_h200.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph

from lvlm_guard.engine.kernels import decode_kernel as dk

sys.path.insert(0, str(Path(__file__).parent))
from bench_decode_attention import HEAD_DIM, HEADS, decode_inputs  # noqa: E402


def microseconds(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=20, return_mode="median") * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--key-len", type=int, default=685)
    parser.add_argument("--blocks", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128, 256])
    parser.add_argument("--targets", type=lambda s: [int(x) for x in s.split(",")], default=[0, 512, 1024, 2048, 4096])
    parser.add_argument("--warps", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8])
    parser.add_argument("--dot", type=lambda s: [bool(int(x)) for x in s.split(",")], default=[False, True])
    args = parser.parse_args()
    rows = []
    specs = {"pai": dk.DecodeKernel(dk.AMPLIFY, alpha=0.2), "var": dk.DecodeKernel(dk.REDISTRIBUTE, p=0.6, rho=0.5)}
    for batch in args.batch_sizes:
        q, k, v, allowed, _, image, sinks = decode_inputs(batch, args.key_len)
        scale = HEAD_DIM**-0.5
        sdpa = microseconds(partial(F.scaled_dot_product_attention, q, k, v, attn_mask=allowed, scale=scale))
        print(f"b{batch} sdpa {sdpa:.1f} us", flush=True)
        rows.append({"batch": batch, "variant": "sdpa", "us": sdpa})
        for (name, spec), block, target, warps, dot in itertools.product(
            specs.items(), args.blocks, args.targets, args.warps, args.dot
        ):
            dk.BLOCK_KEYS, dk.TARGET_PROGRAMS, dk.LAUNCH_OPTIONS = block, max(target, 1), {"num_warps": warps}
            dk.DOT_VALUES = dot
            splits = 1 if target == 0 else 0
            run = partial(dk.decode_attention, q, k, v, allowed, image, spec, sinks, scale, splits)
            row = {"batch": batch, "variant": name, "block": block, "target": target, "warps": warps, "dot": dot}
            row["splits"] = 1 if target == 0 else dk.key_splits(batch * HEADS, args.key_len)[0]
            try:
                row["us"] = microseconds(run)
            except Exception as error:  # e.g. a block too large for the registers
                row["error"] = repr(error)[:200]
            rows.append(row)
            print(row, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)  # after every row: a cut run keeps its rows
            args.out.write_text(
                json.dumps({"gpu": torch.cuda.get_device_name(0), "key_len": args.key_len, "rows": rows})
            )
    for batch in args.batch_sizes:
        for name in specs:
            best = min((r for r in rows if r["batch"] == batch and r["variant"] == name and "us" in r),
                       key=lambda r: r["us"])  # fmt: skip
            print(f"best b{batch} {name}: {best}", flush=True)


if __name__ == "__main__":
    main()
