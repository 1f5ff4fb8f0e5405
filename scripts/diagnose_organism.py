"""Diagnostics of the embedded tiny LLaVA (`tiny-coco`): which attention phenomena it has.

Hallucination methods act on specific phenomena of LLaVA-style models; a method can only be
judged on a model that shows its phenomenon. On N seeded images of the world's test split, with a
captioning prompt and a POPE-style question, this measures:

1. the attention share on image keys per layer, at the last prompt row and at the rows of the
   first generated tokens, against the fraction of keys that are image tokens (PAI's premise);
2. massive activations and attention sinks per layer input: max |value| of BOS, image and text
   tokens, the dimensions that carry it, VAR's RMS-normalised sink test (tau = 20, and tau moved
   to this hidden size), how many visual tokens per image are sinks and the attention they draw;
3. the spread of (layer, head) pairs by image-attention share (VHR / imbalanced-attention fix).

Writes `diagnostics.json` and PNGs to --out. CPU is enough (about 1 s per image on one thread):

    python scripts/diagnose_organism.py --images 100 --seed 0 --out results/organism
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from PIL import Image

import lvlm_guard as lg
from evals.coco import CocoImage, find_split, load_split
from evals.pope.build import question_text
from lvlm_guard.embedded.diagnostics import (
    MASSIVE_RATIO,
    VAR_TAU,
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
from lvlm_guard.embedded.world.coco_format import ensure_world

DESCRIBE = "Please describe this image in detail."
CHECKPOINT = Path(__file__).resolve().parents[1] / "lvlm_guard" / "embedded" / "checkpoints" / "tiny-coco"
KINDS = ("describe", "pope")
IMAGE_CENTRIC_SHARE = 0.5  # the brief's absolute cut; the top decile is reported beside it
VAR_FIRST_LAYER = 2  # VAR edits layers 2..L-1 (VisAttnSink A_exps/lv1.5_7b.yml, our methods notes)
BOS_SINK_DIMS = 2  # VAR uses two sink dims per base LLM (e.g. 2533 and 1415 for LLaMA-2-7B)


@dataclass(frozen=True)
class Case:
    """One test image and the POPE question asked about it."""

    image: CocoImage
    pope_object: str
    pope_present: bool


@dataclass
class Run:
    """What one generation showed, per attention layer."""

    share_prompt_row: torch.Tensor  # [layers, heads] image share at the last prompt row
    share_generated: torch.Tensor  # [layers, heads] mean over generated-token rows (NaN if none)
    share_generating: torch.Tensor  # [layers, heads] mean over all generating rows
    fraction_prompt_row: float
    fraction_generated: float  # NaN if no generated-token rows
    generated_rows: int
    received: torch.Tensor  # [layers, prompt_len] attention on each prompt key, mean over heads and generating rows
    text: str


def choose_cases(root: Path, count: int, seed: int) -> list[Case]:
    split = load_split(find_split(root, "test"))
    images = sorted(split.images, key=lambda im: im.image_id)
    if count > len(images):
        raise SystemExit(f"--images {count}: the test split has only {len(images)} images")
    rng = random.Random(seed)
    names = split.category_names()
    cases = []
    for image in rng.sample(images, count):
        shown = split.objects[image.image_id]
        present = bool(shown) and rng.random() < 0.5
        absent = [name for name in names if name not in shown]
        cases.append(Case(image, rng.choice(shown) if present else rng.choice(absent), present))
    return cases


def run_one(guard: lg.Guard, image: Image.Image, prompt: str, max_new_tokens: int) -> tuple[Run, dict, torch.Tensor]:
    """Generate with every layer tapped; returns the run, the prompt's token groups and its hidden states."""
    num_layers = guard.adapter.spec.num_layers
    with guard.tap(range(num_layers), range(num_layers + 1), prefill_only=False) as taps:
        out = guard.generate([image], [prompt], max_new_tokens=max_new_tokens)
    prompt_ids = guard.state.prompt_ids.cpu()  # [1, P]
    image_keys = guard.adapter.image_token_mask(prompt_ids).cpu()  # [1, P]
    bos = torch.zeros_like(image_keys)
    bos[:, 0] = prompt_ids[:, 0] == guard.processor.tokenizer.bos_token_id
    groups = {"bos": bos[0], "image": image_keys[0], "text": ~(bos[0] | image_keys[0])}
    prompt_len = prompt_ids.shape[1]

    share_prompt, share_gen, share_all, received = [], [], [], []
    fractions_gen: list[float] = []
    for layer in range(num_layers):
        steps = taps.attention[layer]  # prefill [1, H, P, P], then one [1, H, 1, P + t] per step
        rows = [steps[0][:, :, -1:, :]] + steps[1:]
        shares = [attention_mass(r, pad_keys(image_keys, r.shape[-1]))[0, :, 0] for r in rows]  # each [H]
        share_prompt.append(shares[0])
        share_gen.append(
            torch.stack(shares[1:]).mean(0) if len(shares) > 1 else torch.full_like(shares[0], float("nan"))
        )
        share_all.append(torch.stack(shares).mean(0))
        received.append(torch.stack([r[0, :, 0, :prompt_len].mean(0) for r in rows]).mean(0))
        if layer == 0:
            fractions_gen = [float(key_fraction(pad_keys(image_keys, r.shape[-1]))[0]) for r in rows[1:]]
    run = Run(
        share_prompt_row=torch.stack(share_prompt),
        share_generated=torch.stack(share_gen),
        share_generating=torch.stack(share_all),
        fraction_prompt_row=float(key_fraction(image_keys)[0]),
        fraction_generated=sum(fractions_gen) / len(fractions_gen) if fractions_gen else float("nan"),
        generated_rows=len(fractions_gen),
        received=torch.stack(received),
        text=out.texts[0],
    )
    hidden = torch.stack([taps.hidden_states[i][0][0] for i in range(num_layers + 1)])  # [layers + 1, P, D]
    return run, groups, hidden


def hidden_stats(hidden: torch.Tensor, groups: dict[str, torch.Tensor], tau_scaled: float) -> list[dict]:
    """Per hidden index: median |h|, and per token group its max |h|, the dims carrying it, RMS-normalised max."""
    stats = []
    for index in range(hidden.shape[0]):
        h = hidden[index]  # [P, D]
        median = float(h.abs().median())
        normalised = rms_normalise(h).abs()
        entry: dict = {"median_abs": median}
        for name, tokens in groups.items():
            raw, rms = h.abs()[tokens], normalised[tokens]  # [n, D]
            top = raw.max(0).values  # per dim, max over the group's tokens
            massive_tokens = (raw > MASSIVE_RATIO * median).any(-1)
            entry[name] = {
                "max_abs": float(top.max()),
                "max_abs_dim": int(top.argmax()),
                "max_over_median": float(top.max()) / median,
                "massive_dims": massive_dims(h, tokens),
                "tokens_with_massive": int(massive_tokens.sum()),
                "rms_max": float(rms.max()),
                "rms_max_dim": int(rms.max(0).values.argmax()),
                "rms_dims_over_scaled_tau": (rms > tau_scaled).any(0).nonzero().flatten().tolist(),
            }
        stats.append(entry)
    return stats


def dim_profile(hidden: torch.Tensor, groups: dict[str, torch.Tensor]) -> torch.Tensor:
    """`[groups, layers + 1, D]`: per dim, the group's max |h| over the layer's median |h|."""
    magnitude = hidden.abs()  # [layers + 1, P, D]
    median = magnitude.flatten(1).median(1).values[:, None]  # [layers + 1, 1]
    return torch.stack([magnitude[:, tokens].amax(1) / median for tokens in groups.values()])


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two equally shaped tensors, flattened."""
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def mean(values) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return sum(values) / len(values) if values else float("nan")


def summarise_hidden(per_image: list[list[dict]]) -> list[dict]:
    """Means over images of each hidden index's statistics, and the dims most often carrying the max."""
    out = []
    for index in range(len(per_image[0])):
        rows = [stats[index] for stats in per_image]
        entry: dict = {"index": index, "median_abs": mean(r["median_abs"] for r in rows)}
        for name in ("bos", "image", "text"):
            group = [r[name] for r in rows]
            entry[name] = {
                "max_abs": mean(g["max_abs"] for g in group),
                "max_over_median": mean(g["max_over_median"] for g in group),
                "images_with_massive": sum(bool(g["massive_dims"]) for g in group),
                "tokens_with_massive": mean(g["tokens_with_massive"] for g in group),
                "massive_dims_top": Counter(d for g in group for d in g["massive_dims"]).most_common(6),
                "max_abs_dim_top": Counter(g["max_abs_dim"] for g in group).most_common(3),
                "rms_max": mean(g["rms_max"] for g in group),
                "rms_max_max": max(g["rms_max"] for g in group),
                "rms_max_dim_top": Counter(g["rms_max_dim"] for g in group).most_common(3),
            }
        out.append(entry)
    return out


def sink_dimensions(per_image: list[list[dict]], num_layers: int) -> tuple[Counter, Counter, Counter, int]:
    """Candidate sink dims, counted over (image, layer) observations of layers 2..L-1.

    Returns the dims where BOS is massive, the dim carrying BOS's largest |value| (VAR's recipe for
    a new model: the dims where BOS's hidden state is massive), and the dims where image tokens
    pass the scaled tau after RMS normalisation; then the number of observations.
    """
    bos_massive, bos_max, visual = Counter(), Counter(), Counter()
    layers = range(VAR_FIRST_LAYER, num_layers)
    for stats in per_image:
        for layer in layers:
            bos_massive.update(stats[layer]["bos"]["massive_dims"])
            bos_max[stats[layer]["bos"]["max_abs_dim"]] += 1
            visual.update(stats[layer]["image"]["rms_dims_over_scaled_tau"])
    return bos_massive, bos_max, visual, len(per_image) * len(layers)


def sink_report(
    hidden: list[torch.Tensor],
    groups: list[dict[str, torch.Tensor]],
    received: dict[str, list[torch.Tensor]],
    dims: list[int],
    tau: float,
) -> dict:
    """Per attention layer: visual sinks per image, whether BOS is a sink, and the attention they draw.

    hidden: per image `[layers + 1, P, D]` (the describe run); received: per kind, per image
    `[layers, P_kind]`. Sinks of attention layer l come from its input hidden state (index l). BOS
    and the image precede the prompt text, so both kinds share those positions (`image_prefix`).
    """
    num_layers = received[KINDS[0]][0].shape[0]
    per_layer = []
    for layer in range(num_layers):
        counts: list[int] = []
        bos_sink: list[bool] = []
        sink_key_share: list[float] = []
        by_kind = {kind: {"bos": [], "visual_sinks": [], "sinks_of_image": []} for kind in KINDS}
        for i, group in enumerate(groups):
            prefix = image_prefix(group)
            sinks = sink_tokens(hidden[i][layer].float(), dims, tau)[:prefix]  # [prefix]
            bos, image = group["bos"][:prefix], group["image"][:prefix]
            visual = sinks & image
            counts.append(int(visual.sum()))
            bos_sink.append(bool((sinks & bos).any()))
            sink_key_share.append(float(visual.sum()) / float(image.sum()))
            for kind in KINDS:
                r = received[kind][i][layer, :prefix]  # [prefix]
                on_image = float(r[image].sum())
                by_kind[kind]["bos"].append(float(r[bos].sum()))
                by_kind[kind]["visual_sinks"].append(float(r[visual].sum()))
                by_kind[kind]["sinks_of_image"].append(
                    float(r[visual].sum()) / on_image if on_image > 0 else float("nan")
                )
        per_layer.append(
            {
                "layer": layer,
                "visual_sinks_per_image": mean(counts),
                "visual_sinks_max": max(counts),
                "images_with_visual_sinks": sum(c > 0 for c in counts),
                "bos_is_sink": mean(bos_sink),
                "visual_sinks_share_of_image_keys": mean(sink_key_share),
                "attention": {
                    kind: {
                        "on_bos": mean(v["bos"]),
                        "on_visual_sinks": mean(v["visual_sinks"]),
                        "visual_sinks_share_of_image_attention": mean(v["sinks_of_image"]),
                    }
                    for kind, v in by_kind.items()
                },
            }
        )
    return {"tau": tau, "dims": dims, "per_layer": per_layer}


def image_prefix(groups: dict[str, torch.Tensor]) -> int:
    """Length of the prompt up to its last image token: the part every prompt of an image shares."""
    return int(groups["image"].nonzero().max()) + 1


def head_report(per_run: torch.Tensor, fraction: float) -> dict:
    """Spread of (layer, head) image shares and the image-centric heads; per_run: `[runs, layers, heads]`.

    The split-half correlation (first vs second half of the images) says whether the spread is a
    property of the heads or noise of the sample.
    """
    share = per_run.mean(0)
    half = per_run.shape[0] // 2
    cut = top_decile_threshold(share)
    return {
        "split_half_correlation": correlation(per_run[:half].mean(0), per_run[half:].mean(0)),
        "share": [[round(float(v), 4) for v in row] for row in share],
        "mean": float(share.mean()),
        "std": float(share.std()),
        "min": float(share.min()),
        "max": float(share.max()),
        "per_layer_min": [float(v) for v in share.min(1).values],
        "per_layer_max": [float(v) for v in share.max(1).values],
        "key_fraction": fraction,
        "above_key_fraction": len(image_centric_heads(share, fraction)),
        f"above_{IMAGE_CENTRIC_SHARE}": len(image_centric_heads(share, IMAGE_CENTRIC_SHARE)),
        "top_decile_threshold": cut,
        "top_decile_heads": image_centric_heads(share, cut),
        "heads": share.numel(),
    }


# --- plots -------------------------------------------------------------------------------------
def plot_image_attention(summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, KINDS):
        s = summary[kind]
        layers = range(len(s["prompt_row"]))
        ax.plot(layers, s["prompt_row"], "o-", label="last prompt row")
        ax.plot(
            layers,
            s["generated_rows"],
            "s-",
            label=f"generated-token rows (mean {s['generated_rows_per_run']:.1f}/run)",
        )
        ax.axhline(s["key_fraction_prompt_row"], color="k", ls="--", lw=1, label="image fraction of keys (prompt row)")
        ax.axhline(
            s["key_fraction_generated_rows"], color="gray", ls=":", lw=1, label="image fraction of keys (generated)"
        )
        ax.set_title(f"{kind}: attention share on image keys")
        ax.set_xlabel("decoder layer")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("mean over heads and images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_massive(hidden: list[dict], bound: float, tau_scaled: float, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    index = [h["index"] for h in hidden]
    for name, marker in (("bos", "o"), ("image", "s"), ("text", "^")):
        axes[0].plot(index, [h[name]["max_over_median"] for h in hidden], marker + "-", label=name)
        axes[1].plot(index, [h[name]["rms_max"] for h in hidden], marker + "-", label=f"{name} (mean of max)")
    axes[0].axhline(MASSIVE_RATIO, color="r", ls="--", lw=1, label=f"{MASSIVE_RATIO:g}x median")
    axes[0].set_yscale("log")
    axes[0].set_title("max |h| of group / median |h| of layer")
    axes[1].axhline(VAR_TAU, color="r", ls="--", lw=1, label=f"VAR tau = {VAR_TAU:g}")
    axes[1].axhline(bound, color="k", ls=":", lw=1, label=f"bound sqrt(D) = {bound:.1f}")
    axes[1].axhline(tau_scaled, color="orange", ls="--", lw=1, label=f"tau scaled to D: {tau_scaled:.2f}")
    axes[1].set_title("max |RMS-normalised h| (VAR's sink test)")
    for ax in axes:
        ax.set_xlabel("hidden-state index (input of layer i; 8 = last output)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_dim_profile(profile: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = ("bos", "image", "text")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, name in zip(axes, names):
        image = ax.imshow(profile[name], vmin=0, vmax=100, cmap="magma", aspect="auto")
        ax.set_xticks(range(len(profile["dims"])), [str(d) for d in profile["dims"]], rotation=90, fontsize=7)
        ax.set_title(f"{name}: max |h| / layer median (mean over images)", fontsize=9)
        ax.set_xlabel("hidden dimension")
    axes[0].set_ylabel("hidden-state index")
    fig.colorbar(image, ax=axes, fraction=0.02)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_sinks(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    per_layer = report["per_layer"]
    layers = [p["layer"] for p in per_layer]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(layers, [p["visual_sinks_per_image"] for p in per_layer], color="tab:orange")
    axes[0].set_title(f"visual sinks per image (tau {report['tau']:.2f}, dims {report['dims']})", fontsize=9)
    axes[0].set_xlabel("decoder layer (sinks from its input)")
    for kind, marker in zip(KINDS, ("o", "s")):
        axes[1].plot(layers, [p["attention"][kind]["on_bos"] for p in per_layer], marker + "-", label=f"{kind}: on BOS")
        axes[1].plot(
            layers,
            [p["attention"][kind]["visual_sinks_share_of_image_attention"] for p in per_layer],
            marker + "--",
            label=f"{kind}: visual sinks' share of image attention",
        )
    axes[1].plot(
        layers,
        [p["visual_sinks_share_of_image_keys"] for p in per_layer],
        "k:",
        label="visual sinks' share of image keys",
    )
    axes[1].set_title("attention drawn at generating rows")
    axes[1].set_xlabel("decoder layer")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heads(heads: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, kind in zip(axes, KINDS):
        image = ax.imshow(heads[kind]["share"], vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{kind}: image share per head")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax, fraction=0.046)
    for kind in KINDS:
        values = [v for row in heads[kind]["share"] for v in row]
        axes[2].hist(values, bins=20, range=(0, 1), alpha=0.6, label=kind)
    axes[2].axvline(heads["describe"]["key_fraction"], color="k", ls="--", lw=1, label="image fraction of keys")
    axes[2].set_title("heads by image share (generating rows)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=21, help="rows of the first 20 generated tokens")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/organism")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = lg.load("tiny-coco", dtype="float32")
    model.eval()
    guard = lg.attach(model, processor, [])
    root = ensure_world("test", progress=False)
    cases = choose_cases(root, args.images, args.seed)
    num_layers, hidden_size = guard.adapter.spec.num_layers, model.config.text_config.hidden_size
    tau_scaled = scaled_tau(hidden_size)

    runs: dict[str, list[Run]] = {kind: [] for kind in KINDS}
    stats, profiles, hidden_all, groups_all, samples = [], [], [], [], []
    for n, case in enumerate(cases):
        image = Image.open(root / "test" / case.image.file_name).convert("RGB")
        for kind, prompt in (("describe", DESCRIBE), ("pope", question_text(case.pope_object))):
            run, groups, hidden = run_one(guard, image, prompt, args.max_new_tokens)
            runs[kind].append(run)
            if kind == "describe":  # BOS and image tokens precede the prompt text: same states for both
                stats.append(hidden_stats(hidden, groups, tau_scaled))
                profiles.append(dim_profile(hidden, groups))
                hidden_all.append(hidden.half())  # |h| < 300 here: half keeps 3 significant digits
                groups_all.append(groups)
            if n < 3:
                samples.append({"file": case.image.file_name, "prompt": prompt, "answer": run.text})
        if (n + 1) % 10 == 0:
            print(f"{n + 1}/{len(cases)} images, {time.perf_counter() - started:.0f} s", flush=True)

    attention_summary, heads = {}, {}
    for kind in KINDS:
        rs = runs[kind]
        attention_summary[kind] = {
            "prompt_row": [float(v) for v in torch.stack([r.share_prompt_row for r in rs]).mean((0, 2))],
            "generated_rows": [float(v) for v in torch.stack([r.share_generated for r in rs]).nanmean(0).mean(1)],
            "generating_rows": [float(v) for v in torch.stack([r.share_generating for r in rs]).mean((0, 2))],
            "key_fraction_prompt_row": mean(r.fraction_prompt_row for r in rs),
            "key_fraction_generated_rows": mean(r.fraction_generated for r in rs),
            "generated_rows_per_run": mean(r.generated_rows for r in rs),
            "top5_image_tokens_share_of_image_attention": [
                mean(
                    top_share(r.received[layer, : image_prefix(g)][g["image"][: image_prefix(g)]], 5)
                    for r, g in zip(rs, groups_all)
                )
                for layer in range(num_layers)
            ],
        }
        fraction = mean([r.fraction_prompt_row for r in rs] + [r.fraction_generated for r in rs])
        heads[kind] = head_report(torch.stack([r.share_generating for r in rs]), fraction)
    heads["describe_vs_pope_correlation"] = correlation(
        torch.tensor(heads["describe"]["share"]), torch.tensor(heads["pope"]["share"])
    )

    hidden_summary = summarise_hidden(stats)
    bos_massive, bos_max, visual_dims, observations = sink_dimensions(stats, num_layers)
    bos_sink_dims = [dim for dim, _ in bos_max.most_common(BOS_SINK_DIMS)]
    visual_sink_dims = frequent_dims(visual_dims, observations)
    received = {kind: [r.received for r in runs[kind]] for kind in KINDS}
    profile = torch.stack(profiles).mean(0)  # [groups, layers + 1, D]
    # the 6 dims of each group with the highest ratio at any layer, and the sink dims
    strongest = profile.amax(1).topk(6, dim=-1).indices.flatten().tolist()  # [groups * 6]
    profile_dims = sorted(set(strongest) | set(bos_sink_dims) | set(visual_sink_dims))
    massive_profile = {
        "dims": profile_dims,
        **{name: profile[g][:, profile_dims].tolist() for g, name in enumerate(("bos", "image", "text"))},
    }
    criteria = {
        "var_published_tau_bos_dims": sink_report(hidden_all, groups_all, received, bos_sink_dims, VAR_TAU),
        "scaled_tau_bos_dims": sink_report(hidden_all, groups_all, received, bos_sink_dims, tau_scaled),
        "scaled_tau_visual_dims": sink_report(hidden_all, groups_all, received, visual_sink_dims, tau_scaled),
    }
    seconds = time.perf_counter() - started
    training = json.loads((CHECKPOINT / "training.json").read_text())
    result = {
        "model": {
            k: training[k] for k in ("parameters", "weights_bytes", "steps", "train_seconds", "first_loss", "last_loss")
        },
        "setup": {
            "split": "test",
            "images": len(cases),
            "seed": args.seed,
            "pope_present": sum(c.pope_present for c in cases),
            "max_new_tokens": args.max_new_tokens,
            "prompts": {"describe": DESCRIBE, "pope": question_text("{object}")},
            "threads": args.threads,
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "image_attention": attention_summary,
        "hidden": {
            "hidden_size": hidden_size,
            "rms_normalised_bound": rms_normalised_bound(hidden_size),
            "var_tau": VAR_TAU,
            "scaled_tau": tau_scaled,
            "massive_ratio": MASSIVE_RATIO,
            "per_index": hidden_summary,
            "max_over_median_by_dim": massive_profile,
        },
        "sinks": {
            "observations": observations,
            "bos_massive_dims_counts": dict(bos_massive.most_common(10)),
            "bos_max_dim_counts": dict(bos_max.most_common(10)),
            "visual_dims_over_scaled_tau_counts": dict(visual_dims.most_common(10)),
            "bos_sink_dims": bos_sink_dims,
            "visual_sink_dims": visual_sink_dims,
            "criteria": criteria,
        },
        "heads": heads,
        "samples": samples,
    }
    (out / "diagnostics.json").write_text(json.dumps(result, indent=1))
    plot_image_attention(attention_summary, out / "image_attention_by_layer.png")
    plot_massive(hidden_summary, rms_normalised_bound(hidden_size), tau_scaled, out / "massive_activations.png")
    plot_dim_profile(massive_profile, out / "massive_dims_heatmap.png")
    plot_sinks(criteria["scaled_tau_visual_dims"], out / "sinks_visual_dims.png")
    plot_sinks(criteria["scaled_tau_bos_dims"], out / "sinks_bos_dims.png")
    plot_heads(heads, out / "heads_image_attention.png")
    print(f"wrote {out} in {seconds:.0f} s")


if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")
    main()
