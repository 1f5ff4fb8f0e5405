#!/usr/bin/env python
"""Train the packaged tiny LLaVA from scratch on the synthetic COCO world.

One mixed stage: captions, detailed descriptions, yes/no existence questions and object lists
together (LLaVA-1.5's instruction mix, Liu et al. 2023, Table 7, shrunk to our world). Everything
trains: vision tower, projector and decoder, since nothing here is pretrained. The loss is on the
assistant's tokens only. The world is built first if it is missing, so a bare GPU machine only
needs this repository; no network and no pycocotools are needed.

    python scripts/train_tiny_llava.py --out runs/tiny-coco              # GPU run: about 7 min on one H100
    python scripts/train_tiny_llava.py --out /tmp/tiny-smoke --smoke     # 12 CPU steps, about 25 s

The packaged checkpoint came from `--steps 20000 --time-budget 420` on one H100 (3549 steps fitted,
train 335 s, 408 s in all with world building, data preparation and evaluation); the default
`--steps 3549` repeats that schedule, up to the GPU's nondeterministic kernels.

Writes to --out: the model and processor (`save_pretrained`, bf16 safetensors), `loss.jsonl`,
`loss.png`, and `training.json` (arguments, sizes, timings and a small held-out evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvlm_guard.embedded.tiny_data import IGNORE, encode_conversations, load_images, pixel_values  # noqa: E402
from lvlm_guard.embedded.tiny_model import (  # noqa: E402
    IMAGE,
    TinyLlavaSpec,
    build_config,
    build_model,
    build_processor,
    chat_text,
    train_tokenizer,
)
from lvlm_guard.embedded.world import (  # noqa: E402
    COCO_CATEGORIES,
    SYNONYMS,
    category_names,
    ensure_world,
    facts_from_files,
    iter_conversations,
)
from lvlm_guard.embedded.world.instructions import InstructionConfig, ObjectStats, existence_turns  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="directory for the model, processor and logs")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps (default 3549, the packaged checkpoint's run; 12 with --smoke)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="conversations per step (default 128; 4 with --smoke)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 8e-4; 2e-3 with --smoke)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument(
        "--warmup-steps", type=int, default=None, help="steps of linear warm-up (default 150; 2 with --smoke)"
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds of training: steps 20-60 are timed and --steps is lowered to fit (the final count is"
        " logged, so `--steps N` reproduces the run)",
    )
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available; cpu with --smoke)")
    p.add_argument(
        "--world-root",
        type=Path,
        default=None,
        help="synthetic world location (default: the cache; <out>/world with --smoke)",
    )
    p.add_argument("--train-size", type=int, default=None, help="train images (default 20000; 48 with --smoke)")
    p.add_argument(
        "--eval-size", type=int, default=None, help="test images for the final check (default 500; 16 with --smoke)"
    )
    p.add_argument(
        "--variants",
        type=int,
        default=None,
        help="independent draws of the instruction data (default 3; 1 with --smoke)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes that render the world")
    p.add_argument(
        "--log-every", type=int, default=None, help="steps between loss-log lines (default 25; 1 with --smoke)"
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels (bit-identical reruns on the same machine; slower on a GPU)",
    )
    p.add_argument("--smoke", action="store_true", help="a handful of CPU steps on a tiny world, to check the pipeline")
    args = p.parse_args(argv)
    full = dict(
        steps=3549,  # what --time-budget 420 fitted on one H100 for the packaged checkpoint
        batch_size=128,
        lr=8e-4,
        warmup_steps=150,
        train_size=20000,
        eval_size=500,
        variants=3,
        log_every=25,
    )
    smoke = dict(steps=12, batch_size=4, lr=2e-3, warmup_steps=2, train_size=48, eval_size=16, variants=1, log_every=1)
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.world_root is None:
        args.world_root = args.out / "world" if args.smoke else None
    return args


def tokenizer_corpus(conversations, root: Path) -> list[str]:
    """Chat text of the training conversations, captions, and every COCO name (twice, so that BPE
    keeps even names the world never draws as whole tokens: users ask about them)."""
    texts = [chat_text(c.turns)[0] for c in conversations]
    captions = json.loads((root / "annotations" / "captions_train.json").read_text())["annotations"]
    texts += [c["caption"] for c in captions]
    names = [name for _, name, _ in COCO_CATEGORIES] + [w for words in SYNONYMS.values() for w in words]
    vocabulary = " ".join(f"a {n} the {n}s" for n in names)
    return texts + [vocabulary, vocabulary]


def _one_draw(job: tuple[Path, int]) -> list:
    root, seed = job
    return list(iter_conversations(root, "train", seed=seed))


def draw_conversations(root: Path, seed: int, variants: int) -> list:
    """`variants` independent draws of the instruction data, one process each."""
    if variants == 1:
        return _one_draw((root, seed))
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(variants, mp_context=multiprocessing.get_context(method)) as pool:
        return [c for draw in pool.map(_one_draw, [(root, seed + v) for v in range(variants)]) for c in draw]


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up over a fixed number of steps, then cosine decay to 5% of the peak."""
    warm = max(1, args.warmup_steps)
    if step < warm:
        return args.lr * (step + 1) / warm
    t = (step - warm) / max(1, args.steps - warm)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, data, images: torch.Tensor, args: argparse.Namespace, log_path: Path) -> dict:
    """AdamW on the assistant-token loss; batches are rows gathered from tensors on the device."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model.to(device).train()
    decayed = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    others = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": args.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=cuda,
    )
    input_ids, labels = data.input_ids.to(device), data.labels.to(device)
    lengths, image_index, images = data.lengths.to(device), data.image_index.to(device), images.to(device)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(len(lengths), generator=generator) for _ in range(2)])
    warm_steps, timed_steps, window = 20, 40, 0.0  # CUDA warm-up is not timed
    running, since_log, first_loss, record = torch.zeros((), device=device), 0, None, {}
    start = time.time()
    with log_path.open("w") as log, tqdm(total=args.steps, desc="train", unit="step") as bar:
        step = 0
        while step < args.steps:
            if args.time_budget and step in (warm_steps, warm_steps + timed_steps):  # fit steps to the budget
                if cuda:
                    torch.cuda.synchronize()
                if step == warm_steps:
                    window = time.time()
                else:  # steps so far + what the rest of the budget holds at the timed rate
                    per_step = (time.time() - window) / timed_steps
                    fits = step + int((args.time_budget - (time.time() - start)) / per_step)
                    args.steps = max(step + 1, min(args.steps, fits))
                    bar.total = args.steps
            if (step + 1) * args.batch_size > len(order):  # a fresh permutation per pass over the data
                order = torch.cat([order, torch.randperm(len(lengths), generator=generator)])
            rows = order[step * args.batch_size : (step + 1) * args.batch_size].to(device)
            width = int(lengths[rows].max())
            ids, target = input_ids[rows, :width].long(), labels[rows, :width].long()
            mask = (torch.arange(width, device=device)[None, :] < lengths[rows, None]).long()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, args)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                pixels = pixel_values(images[image_index[rows]])
                logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1), ignore_index=IGNORE
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running += loss.detach()
            since_log += 1
            step += 1
            if first_loss is None:
                first_loss = float(loss.detach())
            if step % args.log_every == 0 or step == args.steps:
                mean = float(running) / since_log  # one host sync per log line
                record = {
                    "step": step,
                    "loss": round(mean, 5),
                    "lr": lr_at(step - 1, args),
                    "seconds": round(time.time() - start, 2),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{mean:.3f}")
                running.zero_()
                since_log = 0
            bar.update(1)
    model.eval()
    return {
        "steps": args.steps,
        "first_loss": first_loss,
        "last_loss": record["loss"],
        "train_seconds": round(time.time() - start, 1),
    }


def _object_in(question: str) -> str:
    names = [n for n in category_names() if re.search(rf"\b{re.escape(n)}\b", question)]
    return max(names, key=len) if names else ""


@torch.no_grad()
def evaluate_existence(
    model, tokenizer, image_tokens: int, root: Path, split: str, device: str, batch_size: int = 64
) -> dict:
    """Yes/no accuracy on POPE-style questions about held-out images, read from the first answer
    token ("Yes" vs "No"); also the false-"yes" rate on held-out companions, the questions where a
    co-occurrence prior pushes towards hallucination."""
    facts = facts_from_files(
        root / "annotations" / f"instances_{split}.json", root / "annotations" / f"world_{split}.json"
    )
    stats, config = ObjectStats.from_facts(facts), InstructionConfig()
    questions = []  # (image row, question, label, is a held-out companion)
    for row, f in enumerate(facts):
        rng = np.random.default_rng([1234, f.image_id])
        for q, _, label in existence_turns(f, rng, stats, config):
            questions.append((row, q, label, _object_in(q) in f.held_out))
        for held in f.held_out:
            questions.append((row, f"Is there a {held} in the image?", False, True))
    images = load_images(root / split, [f.file_name for f in facts])
    yes = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" Yes"))[0]
    no = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" No"))[0]
    predictions = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        # the processor's expansion of <image>, done by hand since the pixels are already tensors
        text = [f"USER: {IMAGE * image_tokens}\n{q} ASSISTANT:" for _, q, _, _ in chunk]
        enc = tokenizer(text, return_tensors="pt", padding=True)  # left padding: last column is the answer slot
        rows = torch.tensor([r for r, _, _, _ in chunk])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            logits = model(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                pixel_values=pixel_values(images[rows].to(device)),
            ).logits[:, -1]
        predictions += (logits[:, yes] > logits[:, no]).tolist()
    labels = [label for _, _, label, _ in questions]
    held = [i for i, q in enumerate(questions) if q[3] and not q[2]]
    correct = sum(p == label for p, label in zip(predictions, labels))
    return {
        "questions": len(questions),
        "accuracy": round(correct / max(len(questions), 1), 4),
        "yes_rate": round(sum(predictions) / max(len(predictions), 1), 4),
        "held_out_companion_questions": len(held),
        "held_out_companion_false_yes": round(sum(predictions[i] for i in held) / max(len(held), 1), 4),
    }


def check_saved(out: Path, root: Path, split: str) -> str:
    """Load the saved directory the way users will (offline) and answer one question."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    image = Image.open(next(iter(sorted((root / split).glob("*.jpg")))))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a dog in the image?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    return processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def plot_loss(log_path: Path, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no loss.png", file=sys.stderr)
        return
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    began = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True, warn_only=True)
    root = ensure_world("train", args.world_root, seed=args.seed, size=args.train_size, workers=args.workers)
    ensure_world("test", root, seed=args.seed, size=args.eval_size, workers=args.workers)
    world_seconds = time.time() - began

    conversations = draw_conversations(root, args.seed, args.variants)
    conversations_seconds = time.time() - began - world_seconds
    tokenizer = train_tokenizer(tokenizer_corpus(conversations[: len(conversations) // args.variants], root))
    spec = TinyLlavaSpec()
    processor = build_processor(tokenizer, spec)
    model = build_model(build_config(tokenizer, spec), seed=args.seed)
    files = sorted({c.image_file for c in conversations})
    data = encode_conversations(conversations, files, tokenizer, spec.image_tokens)
    images = load_images(root, files)
    prep_seconds = time.time() - began - world_seconds
    params = sum(p.numel() for p in model.parameters())
    print(
        f"world {world_seconds:.1f}s, data {prep_seconds:.1f}s ({conversations_seconds:.1f}s drawing conversations):"
        f" {len(files)} images, {len(conversations)} conversations ({data.truncated} truncated),"
        f" vocab {len(tokenizer)}, {params / 1e6:.2f}M parameters"
    )

    log_path = args.out / "loss.jsonl"
    result = train(model, data, images, args, log_path)
    model.to("cpu", torch.bfloat16).save_pretrained(args.out)  # saved before anything else can fail
    processor.save_pretrained(args.out)
    plot_loss(log_path, args.out / "loss.png")
    # the shipped bf16 weights, computed in fp32 on a CPU (bf16 matmuls are slow there)
    model.to(args.device, torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    evaluation = evaluate_existence(model, tokenizer, spec.image_tokens, root, "test", args.device)
    answer = check_saved(args.out, root, "test")
    weights = sum(p.stat().st_size for p in args.out.glob("*.safetensors"))
    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "spec": asdict(spec),
        "parameters": params,
        "weights_bytes": weights,
        "vocab_size": len(tokenizer),
        "images": len(files),
        "conversations": len(conversations),
        "world_seconds": round(world_seconds, 1),
        "prep_seconds": round(prep_seconds, 1),
        **result,
        "eval_test": evaluation,
        "sample_answer": answer,
        "total_seconds": round(time.time() - began, 1),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
    }
    (args.out / "training.json").write_text(json.dumps(summary, indent=1))
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "first_loss",
                    "last_loss",
                    "train_seconds",
                    "total_seconds",
                    "parameters",
                    "weights_bytes",
                    "eval_test",
                    "sample_answer",
                )
            },
            indent=1,
        )
    )
    return summary


if __name__ == "__main__":
    main()
