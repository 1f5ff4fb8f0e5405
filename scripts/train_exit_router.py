"""Train DyVTE's exit router (`lvlm_guard.methods.token_exit.router`) for a model on a COCO-format split.

Labels as in DyVTE (notes: /work/shared/notes/methods.md): the MLLM is frozen; for each sample
(an image, a prompt and a teacher-forced answer) and each layer l, label 1 (exit OK after l) when
the model with the image tokens exiting after l predicts the same greedy tokens as the full model
on > 99% of the answer tokens and its answer loss is < 1.03 x the full model's. Features: the
router input after layer l at prefill (prompt part only; causal attention makes it equal to a
prompt-only forward). The routers (DyVTE's MLP) are then trained as `fit` says.

Samples mix the two kinds of prompt the evals ask (DyVTE trains on a mix of instruction data): a
caption (one of several caption requests + the image's first reference caption) and a POPE question ("Is
there a/an X in the image?" about a present or an absent category, answered with the full model's
own greedy answer). A router trained on one prompt only extrapolates wildly to the other: the
first shipped tiny-coco router, trained on captions alone, exited after layer 0 on every POPE
question. A quarter of the images are held out and the per-layer held-out accuracy is reported.
Deviation from DyVTE's data: its 1% of LLaVA-665k single-turn samples do not exist here; the
world's captions and POPE-style questions stand in.

    python scripts/train_exit_router.py --model tiny-coco --split calib --num-images 64 \
        --out lvlm_guard/embedded/checkpoints/tiny-coco-exit-router

For a real checkpoint: same command with `--model llava-hf/llava-1.5-7b-hf --device cuda
--dtype bfloat16 --root <coco root with captions and instances>`; a few hundred images suffice.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

import lvlm_guard as lg
from evals.pope.build import question_text
from lvlm_guard.embedded.world import default_world_root, ensure_world
from lvlm_guard.methods.token_exit import VisualTokenExit
from lvlm_guard.methods.token_exit.router import ExitRouter, after_image_mask, router_features

# caption requests of several phrasings (the router must not key on one prompt's wording; the second
# run of this script, trained on "Describe the image." alone, exited early on CHAIR's "Please describe
# this image in detail." and ruined its captions)
CAPTION_PROMPTS = (
    "Describe the image.",
    "Please describe this image in detail.",
    "What do you see in this picture?",
    "Write a short caption for this image.",
)
QUESTION_ANSWER_TOKENS = 12  # the full model's greedy answer to a POPE question, teacher-forced
AGREEMENT = 0.99  # DyVTE: greedy predictions agree on > 99% of answer tokens
LOSS_RATIO = 1.03  # DyVTE: exit loss < 1.03 x the full model's


def answer_stats(logits: torch.Tensor, ids: torch.Tensor, n_answer: int) -> tuple[torch.Tensor, float]:
    """Greedy predictions and mean cross-entropy of the last `n_answer` tokens (batch 1)."""
    pred_logits = logits[0, -n_answer - 1 : -1].float()
    target = ids[0, -n_answer:]
    return pred_logits.argmax(-1), float(torch.nn.functional.cross_entropy(pred_logits, target))


def greedy_answer(model, processor, image: Image.Image, question: str) -> str:
    guard = lg.attach(model, processor, [])
    try:
        return guard.generate(images=[image], prompts=[question], max_new_tokens=QUESTION_ANSWER_TOKENS).texts[0]
    finally:
        guard.detach()


def sample_rows(model, processor, image: Image.Image, question: str, answer: str, device) -> tuple[list, list]:
    """Per layer l: (features after l, label) for one (image, prompt, teacher-forced answer) sample."""
    adapter = lg.Guard(model, processor, []).adapter
    prompt = adapter.chat_prompt(processor, question, 1)
    inputs = processor(images=[image], text=[f"{prompt} {answer}"], return_tensors="pt").to(device)
    prompt_len = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
    ids = inputs["input_ids"]
    n_answer = ids.shape[1] - prompt_len
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
    full_pred, full_loss = answer_stats(full.logits, ids, n_answer)
    image_tokens = adapter.image_token_mask(ids[:, :prompt_len])
    after = after_image_mask(image_tokens, None)
    num_layers = adapter.spec.num_layers
    features, labels = [], []
    for layer in range(num_layers):
        hidden = full.hidden_states[layer + 1][:, :prompt_len]
        features.append(router_features(hidden.float(), after)[0].cpu())
        if layer == num_layers - 1:
            labels.append(1)  # exiting after the last layer changes nothing
            continue
        guard = lg.attach(model, processor, [VisualTokenExit(layer=layer)])
        try:
            with torch.no_grad():
                logits = model(**inputs).logits
        finally:
            guard.detach()
        pred, loss = answer_stats(logits, ids, n_answer)
        agree = float((pred == full_pred).float().mean())
        labels.append(int(agree > AGREEMENT and loss < LOSS_RATIO * full_loss))
    return features, labels


def fit(
    features: torch.Tensor, labels: torch.Tensor, hidden_size: int, args: argparse.Namespace
) -> tuple[ExitRouter, list[float]]:
    """`features[n, L, 2D]`, `labels[n, L]` -> routers trained as DyVTE trains them.

    Each batch holds samples of one layer (the official forward draws one exit layer per batch);
    cross-entropy with class weights (1, 1); AdamW, weight decay 0, cosine schedule with 3% warm-up
    (finetune_visual_gate.sh). An epoch visits every (sample, layer) pair once: with a few hundred
    samples instead of the official 6.6 k, the routers need many epochs (`--epochs`)."""
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    n, num_layers = labels.shape
    router = ExitRouter(num_layers, hidden_size, args.width)
    batches_per_epoch = num_layers * -(-n // args.batch_size)
    total = args.epochs * batches_per_epoch
    opt = torch.optim.AdamW(router.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, round(0.03 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    )  # fmt: skip
    losses = []
    for _ in tqdm(range(args.epochs), desc="router epochs", unit="epoch"):
        batches = [
            (layer, chunk)
            for layer in range(num_layers)
            for chunk in torch.randperm(n, generator=generator).split(args.batch_size)
        ]
        order = torch.randperm(len(batches), generator=generator).tolist()
        epoch_loss = 0.0
        for index in order:
            layer, rows = batches[index]
            loss = torch.nn.functional.cross_entropy(router.logits(layer, features[rows, layer]), labels[rows, layer])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            epoch_loss += float(loss) / len(order)
        losses.append(epoch_loss)
    return router.eval(), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-coco")
    parser.add_argument("--split", default="calib")
    parser.add_argument("--root", default=None, help="COCO-format root (default: the embedded world)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--width", type=int, default=128, help="router width (DyVTE: 2048; tiny-coco ships 128)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16, help="DyVTE: 16 per device")
    parser.add_argument("--lr", type=float, default=6e-5, help="DyVTE finetune_visual_gate.sh: 6e-5")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    root = Path(args.root) if args.root else default_world_root()
    if args.root is None:
        ensure_world(args.split)
    captions = json.loads((root / "annotations" / f"captions_{args.split}.json").read_text())
    instances = json.loads((root / "annotations" / f"instances_{args.split}.json").read_text())
    files = {img["id"]: img["file_name"] for img in captions["images"]}
    first_caption: dict[int, str] = {}
    for ann in captions["annotations"]:
        first_caption.setdefault(ann["image_id"], ann["caption"])
    names = {cat["id"]: cat["name"] for cat in instances["categories"]}
    present: dict[int, set[str]] = {}
    for ann in instances["annotations"]:
        present.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    image_ids = sorted(first_caption)[: args.num_images]

    device_map = None if args.device == "cpu" else args.device
    model, processor = lg.load(args.model, dtype=args.dtype, device_map=device_map)
    model.eval()
    rng = random.Random(args.seed)
    start = time.time()
    feats, labels, kinds = [], [], []
    for image_id in tqdm(image_ids, desc="router samples", unit="img"):
        image = Image.open(root / args.split / files[image_id]).convert("RGB")
        objects = sorted(present.get(image_id, ()))
        absent = sorted(set(names.values()) - set(objects))
        asked = rng.choice(objects) if objects and (rng.random() < 0.5 or not absent) else rng.choice(absent)
        question = question_text(asked)
        samples = [("caption", rng.choice(CAPTION_PROMPTS), first_caption[image_id])]
        samples.append(("question", question, greedy_answer(model, processor, image, question)))
        for kind, prompt, answer in samples:
            f, y = sample_rows(model, processor, image, prompt, answer, model.device)
            feats.append(torch.stack(f))
            labels.append(torch.tensor(y))
            kinds.append(kind)
    features, targets = torch.stack(feats), torch.stack(labels)
    # hold out the last quarter of the images (both of their samples) for an honest accuracy
    n_train = 2 * max(1, (3 * len(image_ids)) // 4)
    router, losses = fit(features[:n_train], targets[:n_train], features.shape[-1] // 2, args)
    with torch.no_grad():
        p = torch.stack([router.exit_probability(i, features[:, i]) for i in range(features.shape[1])], 1)
    correct = ((p > 0.5).long() == targets).float()
    question_rows = torch.tensor([k == "question" for k in kinds])
    out = Path(args.out)
    router.save(out)
    summary = {
        "model": args.model,
        "split": args.split,
        "num_images": len(image_ids),
        "samples": {"train": n_train, "held_out": len(kinds) - n_train, "kinds": ["caption", "question"]},
        "label_rate_per_layer": {
            "caption": targets[~question_rows].float().mean(0).tolist(),
            "question": targets[question_rows].float().mean(0).tolist(),
        },
        "train_accuracy_per_layer": correct[:n_train].mean(0).tolist(),
        "held_out_accuracy_per_layer": correct[n_train:].mean(0).tolist(),
        "held_out_exit_rate_per_layer": (p[n_train:] > 0.5).float().mean(0).tolist(),
        "seconds": round(time.time() - start, 1),
        "training": {
            "width": args.width,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "loss_per_epoch": [round(x, 5) for x in losses],
        },
        "criteria": {"agreement": AGREEMENT, "loss_ratio": LOSS_RATIO, "caption_prompts": list(CAPTION_PROMPTS)},
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
