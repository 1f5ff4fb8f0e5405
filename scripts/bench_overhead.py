"""Speed and memory of guarded generation on a LLaVA-1.5-7B-shaped model (random weights, bf16).

Measures, in one run and with the modes interleaved (A B C A B C ...) so drift hits all alike:
  - decode tokens/s of plain HF generate, a guard with nothing enabled, PAI attention
    amplification, and PAI with its image-free contrastive branch; batch 1 and 8; dynamic cache,
    and static cache + compiled decode;
  - prefill latency with 576 image tokens (CUDA events, median);
  - peak GPU memory of each;
  - with --quant: the 4-bit bitsandbytes path (random model saved, reloaded through lg.load).
Writes JSON (medians, every repetition, ratios to plain) to --out.

    python scripts/bench_overhead.py --out results/bench_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from transformers import LlavaConfig, LlavaForConditionalGeneration, StoppingCriteriaList

import lvlm_guard as lg
from evals.speed import StepClock, step_statistics
from lvlm_guard.engine.kernels import triton_launch
from lvlm_guard.methods.pai.contrastive import ImageFreeContrast

IMAGE_TOKENS = 576  # CLIP ViT-L/14 at 336 px, CLS dropped
IMAGE_TOKEN_ID = 32000


def llava_1_5_7b_config() -> LlavaConfig:
    """The published llava-hf/llava-1.5-7b-hf architecture (CLIP ViT-L/14-336 + Vicuna-7B)."""
    return LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
            vocab_size=32000,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=0,
    )


def build_model(device: str, smoke: bool = False) -> LlavaForConditionalGeneration:
    config = llava_1_5_7b_config()
    if smoke:  # same code paths, small shapes: check the script before spending minutes on it
        config.text_config.num_hidden_layers = 4
        config.vision_config.num_hidden_layers = 2
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    model.set_attn_implementation("sdpa")
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.generation_config.pad_token_id = 0
    return model


def make_inputs(batch: int, device: str, text_after: int = 40, text_before: int = 5) -> dict:
    """`USER: <576 image tokens> ...40 text tokens... ASSISTANT:`-shaped random inputs."""
    g = torch.Generator().manual_seed(batch)
    before = torch.randint(3, 32000, (batch, text_before), generator=g)
    before[:, 0] = 1
    image = torch.full((batch, IMAGE_TOKENS), IMAGE_TOKEN_ID)
    after = torch.randint(3, 32000, (batch, text_after), generator=g)
    ids = torch.cat([before, image, after], 1).to(device)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, 336, 336, generator=g).to(device, torch.bfloat16),
    }


def contrast_processor(guard: lg.Guard, inputs: dict, gamma: float) -> ImageFreeContrast:
    ids = inputs["input_ids"]
    text_ids = ids[ids != IMAGE_TOKEN_ID].view(ids.shape[0], -1)
    return ImageFreeContrast(
        guard.model,
        {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)},
        gamma=gamma,
        plausibility=0.1,
        suspend=guard.suspended,
    )


#: modes with their own meaning; any other mode is a guard spec (`var`, `var,vhr`, `exit:layer=8`)
SPECIAL_MODES = {
    "plain": None,  # no guard attached
    "guard_off": [],  # a guard attached with nothing enabled
    "pai": [lg.PAI(gamma=None)],  # attention amplification only
    "pai_cfg": [lg.PAI()],  # plus the image-free contrastive branch
    "vcd": [lg.VCD()],  # the noised-image branch as extra batch rows (dynamic cache; static is refused, skipped)
}
DEFAULT_MODES = list(SPECIAL_MODES)


def interventions_of(mode: str) -> list | None:
    """The interventions a mode attaches (None: no guard at all); a suffix after `@`: `paths_of`."""
    mode = mode.split("@")[0]
    if mode in SPECIAL_MODES:
        return SPECIAL_MODES[mode]
    return lg.parse_guard_spec(mode)


def paths_of(mode: str) -> lg.FastPaths:
    """`<mode>@unfused`: the same guard with its edits as an SDPA bias (no FlexAttention);
    `<mode>@kernel` / `<mode>@nokernel`: with / without the fused Triton decoding kernel;
    otherwise the defaults. (`<mode>@jitlaunch`, the kernel launched through Triton's own path every
    time, is `jit_setting`.)"""
    if mode.endswith("@unfused"):
        return lg.FastPaths(score_mods="off")
    if mode.endswith("@nokernel"):
        return lg.FastPaths(decode_kernel="off")
    return lg.FastPaths()


@contextmanager
def jit_setting(mode: str):
    """`<mode>@jitlaunch`: `triton_launch.ENABLED` off (a benchmark-only switch of the launcher)."""
    previous = triton_launch.ENABLED
    triton_launch.ENABLED = not mode.endswith("@jitlaunch")
    try:
        yield
    finally:
        triton_launch.ENABLED = previous


def run_generate(model, inputs, mode, new_tokens, cache, clock: StepClock | None = None):
    """One timed generate; returns (seconds, peak bytes, generated ids)."""
    with jit_setting(mode):
        return _run_generate(model, inputs, mode, new_tokens, cache, clock)


def _run_generate(model, inputs, mode, new_tokens, cache, clock) -> tuple[float, int, torch.Tensor]:
    interventions = interventions_of(mode)
    guard = lg.attach(model, None, interventions, paths=paths_of(mode)) if interventions is not None else None
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    if clock is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([clock])
    if mode.startswith("pai_cfg"):
        kwargs["logits_processor"] = [contrast_processor(guard, inputs, gamma=1.1)]
    try:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if clock is not None:
            clock.started = start
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kwargs
            )
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
    finally:
        if guard is not None:
            guard.detach()
    return seconds, peak, out[:, inputs["input_ids"].shape[1] :].cpu()


def prefill_latency(model, inputs, mode, reps: int) -> list[float]:
    interventions = interventions_of(mode)
    guard = lg.attach(model, None, interventions, paths=paths_of(mode)) if interventions is not None else None
    times = []
    try:
        with torch.no_grad():
            for i in range(reps + 2):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(**inputs, use_cache=True, logits_to_keep=1)
                end.record()
                torch.cuda.synchronize()
                if i >= 2:
                    times.append(start.elapsed_time(end) / 1000)
    finally:
        if guard is not None:
            guard.detach()
    return times


def bench_generation(model, args, results: dict, save) -> None:
    for cache in args.caches:
        for batch in args.batch_sizes:
            inputs = make_inputs(batch, "cuda")
            modes = [m for m in args.modes if not (m == "pai_cfg" and cache == "static" and args.skip_static_cfg)]
            tokens: dict[str, torch.Tensor] = {}
            # warm-up; the static cache compiles for its exact length, so it warms at full length
            warm_tokens = args.new_tokens if cache == "static" or not args.warm_tokens else args.warm_tokens
            for mode in list(modes):
                start = time.perf_counter()
                try:
                    _, _, tokens[mode] = run_generate(model, inputs, mode, warm_tokens, cache)
                except Exception as error:  # one unsupported mode must not cost the whole run
                    modes.remove(mode)
                    results.setdefault("errors", []).append(
                        {"cache": cache, "batch": batch, "mode": mode, "error": repr(error)}
                    )
                    print(f"[skip] {cache} b{batch} {mode}: {error!r}", flush=True)
                    continue
                print(f"[warm] {cache} b{batch} {mode}: {time.perf_counter() - start:.1f}s", flush=True)
            reps: dict[str, list[float]] = {m: [] for m in modes}
            decode_reps: dict[str, list[float]] = {m: [] for m in modes}
            clocks: dict[str, list[StepClock]] = {m: [] for m in modes}  # each run's step times
            peaks: dict[str, int] = {}
            for _ in range(args.reps):
                for mode in modes:
                    clock = StepClock()
                    seconds, peak, _ = run_generate(model, inputs, mode, args.new_tokens, cache, clock)
                    clocks[mode].append(clock)
                    reps[mode].append(batch * args.new_tokens / seconds)
                    peaks[mode] = peak
                    # prefill and the first token alone: the rest is the decoding steps' rate
                    first, _, _ = run_generate(model, inputs, mode, 1, cache)
                    decode_reps[mode].append(batch * (args.new_tokens - 1) / max(seconds - first, 1e-9))
            for mode in modes:
                median = statistics.median(reps[mode])
                entry = {
                    "cache": cache,
                    "batch": batch,
                    "mode": mode,
                    "new_tokens": args.new_tokens,
                    "tokens_per_s_median": median,
                    "tokens_per_s_reps": reps[mode],
                    "peak_memory_gib": peaks[mode] / 2**30,
                    "ratio_to_plain": median / statistics.median(reps["plain"]) if "plain" in reps else None,
                    # each repetition against the plain run next to it: drift of the machine cancels
                    "ratio_to_plain_paired_median": statistics.median(
                        [x / p for x, p in zip(reps[mode], reps["plain"])]
                    )
                    if "plain" in reps
                    else None,
                    # decoding steps only (generate's time minus a prefill-and-first-token generate)
                    "decode_tokens_per_s_median": statistics.median(decode_reps[mode]),
                    "decode_ratio_to_plain_paired_median": statistics.median(
                        [x / p for x, p in zip(decode_reps[mode], decode_reps["plain"])]
                    )
                    if "plain" in decode_reps
                    else None,
                    **step_statistics(clocks, mode, batch, args.new_tokens),
                }
                results["generation"].append(entry)
                print(
                    f"{cache:7s} b{batch} {mode:9s} {median:8.1f} tok/s  x{entry['ratio_to_plain'] or 0:.3f}"
                    f" (paired x{entry['ratio_to_plain_paired_median'] or 0:.3f})"
                    f"  decode only x{entry['decode_ratio_to_plain_paired_median'] or 0:.3f}"
                    f"  step {entry['step_ms_median']:.2f} ms x{entry['step_ratio_to_plain'] or 0:.3f}"
                    f" (paired x{entry['step_ratio_to_plain_paired_median'] or 0:.3f})"
                    f"  steady x{entry['steady_ratio_to_plain'] or 0:.3f}"
                    f" (paired x{entry['steady_ratio_to_plain_paired_median'] or 0:.3f})"
                    f"  peak {entry['peak_memory_gib']:.1f} GiB",
                    flush=True,
                )
            results.setdefault("tokens", {})[f"{cache}_b{batch}"] = {m: t[0, :64].tolist() for m, t in tokens.items()}
            save()


def bench_prefill(model, args, results: dict) -> None:
    for batch in args.batch_sizes:
        inputs = make_inputs(batch, "cuda")
        per_mode = {m: [] for m in ["plain", *(m for m in args.prefill_modes if m != "plain")]}
        for _ in range(3):  # interleaved rounds
            for mode in per_mode:
                per_mode[mode] += prefill_latency(model, inputs, mode, args.prefill_reps)
        for mode, times in per_mode.items():
            median = statistics.median(times)
            results["prefill"].append(
                {
                    "batch": batch,
                    "mode": mode,
                    "seq_len": inputs["input_ids"].shape[1],
                    "image_tokens": IMAGE_TOKENS,
                    "latency_s_median": median,
                    "latency_s_all": times,
                    "ratio_to_plain": median / statistics.median(per_mode["plain"]),
                }
            )
            print(f"prefill b{batch} {mode:9s} {median * 1000:7.1f} ms", flush=True)


def bench_quantized(model, args, results: dict) -> None:
    """Save the random model, reload it 4-bit through lg.load (vision tower and projector kept bf16)."""
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    from lvlm_guard.embedded import CHECKPOINTS

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        model.save_pretrained(tmp)
        LlavaProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
            tokenizer=PreTrainedTokenizerFast.from_pretrained(CHECKPOINTS / "tiny-coco"),
            patch_size=14,
            vision_feature_select_strategy="default",
        ).save_pretrained(tmp)
        bf16_bytes = model.get_memory_footprint()
        model.to("cpu")
        torch.cuda.empty_cache()
        quantized, _ = lg.load(tmp, quantization="4bit", dtype="bfloat16", device_map="cuda:0")
    quantized.generation_config.eos_token_id = None
    quantized.generation_config.pad_token_id = 0
    kinds = {type(m).__name__ for m in quantized.model.vision_tower.modules()} | {
        type(m).__name__ for m in quantized.model.multi_modal_projector.modules()
    }
    entry = {
        "new_tokens": args.quant_new_tokens,
        "footprint_gib_bf16": bf16_bytes / 2**30,
        "footprint_gib_4bit": quantized.get_memory_footprint() / 2**30,
        "vision_and_projector_unquantized": not any("4bit" in k for k in kinds),
        "decoder_linear_type": type(quantized.model.language_model.layers[0].self_attn.q_proj).__name__,
    }
    inputs = make_inputs(1, "cuda")
    reps = {"plain": [], "pai": []}
    for mode in reps:
        run_generate(quantized, inputs, mode, 32, "dynamic")
    for _ in range(args.reps):
        for mode in reps:
            seconds, peak, _ = run_generate(quantized, inputs, mode, args.quant_new_tokens, "dynamic")
            reps[mode].append(args.quant_new_tokens / seconds)
            entry[f"peak_memory_gib_{mode}"] = peak / 2**30
    for mode, values in reps.items():
        entry[f"tokens_per_s_median_{mode}"] = statistics.median(values)
        entry[f"tokens_per_s_reps_{mode}"] = values
    entry["ratio_pai_to_plain"] = entry["tokens_per_s_median_pai"] / entry["tokens_per_s_median_plain"]
    results["quantized_4bit"] = entry
    print(json.dumps(entry, indent=1), flush=True)


def token_agreement(tokens: dict) -> dict:
    """Fraction of the first 64 greedy tokens that static+compiled decoding shares with dynamic."""
    agreement = {}
    for key, by_mode in tokens.items():
        if not key.startswith("static_"):
            continue
        dynamic = tokens.get(key.replace("static_", "dynamic_"), {})
        for mode, ids in by_mode.items():
            if mode in dynamic:
                same = sum(a == b for a, b in zip(ids, dynamic[mode]))
                agreement[f"{key}_{mode}"] = same / max(len(ids), 1)
    return agreement


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--caches", type=lambda s: s.split(","), default=["dynamic", "static"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=DEFAULT_MODES,
        help="plain, guard_off, pai, pai_cfg, vcd or guard specs (space-separated)",
    )
    parser.add_argument("--prefill-modes", nargs="+", default=["plain", "guard_off", "pai"])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--warm-tokens", type=int, default=None, help="warm-up length for the dynamic cache (default: full)"
    )
    parser.add_argument("--quant-new-tokens", type=int, default=64)
    parser.add_argument("--prefill-reps", type=int, default=5)
    parser.add_argument("--skip-prefill", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-static-cfg", action="store_true")
    parser.add_argument("--quant", action="store_true", help="also benchmark the 4-bit bitsandbytes path")
    parser.add_argument("--tmp", default=None, help="where to save the random model for --quant")
    parser.add_argument("--smoke", action="store_true", help="4-layer model, to check the script quickly")
    args = parser.parse_args(argv)
    torch._dynamo.config.cache_size_limit = 64
    results = {
        "config": "llava-1.5-7b shape, random weights, bf16, sdpa",
        "args": {k: str(v) for k, v in vars(args).items()},
        "env": {
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lvlm_guard": lg.__version__,
            "python": platform.python_version(),
        },
        "generation": [],
        "prefill": [],
    }
    model = build_model("cuda", smoke=args.smoke)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a run cut short keeps what it measured
        results["static_vs_dynamic_token_agreement"] = token_agreement(results.get("tokens", {}))
        args.out.write_text(json.dumps(results, indent=1))

    if not args.skip_prefill:
        bench_prefill(model, args, results)
        save()
    if not args.skip_generation:
        bench_generation(model, args, results, save)
    if args.quant:
        bench_quantized(model, args, results)
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
