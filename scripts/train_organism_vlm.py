"""Stages B, C, D of issue 18 and the export: the LLaVA built on the stage-A LLaMA.

  vit        stage B: a CLIP ViT (6 x 256, patch 16, 224 px) trained contrastively on world images
             against a text encoder of its own (4 x 256, from scratch, stage-A tokenizer), which is
             dropped afterwards; the ViT is then frozen. Texts: a COCO-style caption or a long
             description of the image (noise kept). Why not the stage-A LM as the text side: its
             states are dominated by BOS's massive dims (46 vs a median 0.17) and were never trained
             as sentence embeddings, and a trainable text tower is CLIP's own recipe; the text side
             ships nothing, so its choice costs no bytes.
  projector  stage C: the 2-layer GELU projector only (ViT and LM frozen), image -> caption, lr 1e-3
             (LLaVA-1.5 stage 1).
  instruct   stage D: projector + LM on the instruction mix (`lvlm_guard.embedded.organism.instruct`:
             detail 25%, existence 25%, short 15%, counting 10%, caption 10%, objects 10%, text-only
             5%; LLaVA-1.5's system prompt before the image), lr 1e-4 for both (stage A's peak / 10;
             LLaVA-1.5 uses 2e-5 after a 3e-4 pretraining, 1/15), weight decay 0 (LLaVA's).
  export     LlavaForConditionalGeneration + LlavaProcessor (stage-A tokenizer, v2 chat template with
             the system prompt by default) as int8 per output channel + float32 scales in lzma
             shards <= 16 MiB (`lm.save_int8_model`); `lg.load(folder)` dequantizes at load, and
             the dequantized model is the one every number is measured on. Checks: greedy answers
             of the reloaded model equal the in-memory dequantized model's; a 300-question yes/no
             accuracy on fresh images.
  all        the four in one process (one GPU call chain), each stage with its own --minutes.

Data: worker processes (spawn) render world images (`world.render`, ~340 images/s per core measured
on the 2-core CPU machine, `results/organism_v2/README.md`) and write them with their token rows
into shared memory; the trainer takes chunks round-robin (the data are a function of the seed and
the worker count). Stage B keeps a GPU-resident pool of images (uint8) refreshed by `--fresh` new
images per step, because the ViT eats images faster than 14 cores render them; stages C and D use
every image for `--per-image` sequences, each sequence once. Every stage: seeded, tqdm, loss.jsonl,
weights at the end (`--resume` starts from weights with a fresh optimiser and a short warm-up).

GPU budget plan (next session: 30 min of H200 time, 10 min per command, the machine is lost after
30 s idle, <= 8 files x 16 MiB back per call, working tree <= 64 MiB):

  call 1 (<= 590 s): start `all` in the background (setsid), then poll its log until 570 s:
    bash -c 'mkdir -p /tmp/v2 && setsid nohup env PYTHONPATH=. python scripts/train_organism_vlm.py all
      --out /tmp/v2 --workers 14 --minutes-vit 6 --minutes-projector 2 --minutes-instruct 9.5
      > /tmp/v2/log.txt 2>&1 < /dev/null & sleep 560; tail -c 3000 /tmp/v2/log.txt;
      python scripts/train_organism_vlm.py collect --out /tmp/v2 --dest $OUT'
  call 2 (<= 590 s), at once after call 1 returns:
    bash -c 'sleep 570; tail -c 3000 /tmp/v2/log.txt; python scripts/train_organism_vlm.py collect --out /tmp/v2 --dest $OUT'
  call 3 (<= 420 s): wait for /tmp/v2/export/DONE, then collect (the v2 folder: 2 int8 shards
    ~10 MB each, config, processor, tokenizer, logs):
    bash -c 'while [ ! -f /tmp/v2/export/DONE ] && [ $SECONDS -lt 400 ]; do sleep 5; done;
      tail -c 3000 /tmp/v2/log.txt; python scripts/train_organism_vlm.py collect --out /tmp/v2 --dest $OUT'
  collect puts files under 1 MiB into one small.tar (<= 8 files per call).
  Stage times: B 6 min + C 2 min + D 9.5 min + start, worker spawn, checks ~2.5 min = ~20 min of
  training inside ~26 min of calls. `collect` copies each finished stage's small weights (ViT int8
  ~4 MB, projector 1 MB, the export) so a lost machine resumes from what came back:
    python scripts/train_organism_vlm.py projector --vit <returned vit/int8> ...
    python scripts/train_organism_vlm.py instruct --vit ... --projector <returned projector.pt>
  Swap after the run (here, CPU): copy the export over lvlm_guard/embedded/checkpoints/tiny-coco/
  (`git rm` v1's model.safetensors, 36 MB; v1 stays in git history and scripts/train_tiny_llava.py),
  tree ~62 - 37.6 + 21 = ~46 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGE_A = "lvlm_guard/embedded/checkpoints/organism-v2-stage-a"
STAGES = ("vit", "projector", "instruct")
STAGE_SEED = {"vit": 1, "projector": 2, "instruct": 3}


# -- what a worker writes ------------------------------------------------------------------------
class ChunkWriter:
    """Renders images and writes a chunk: `images` uint8 [n, s, s, 3], `ids` int32 [n * per_image,
    max_len] (pad-filled), `mask` bool (loss positions; stage B: unused), `has_image` bool per row.
    Stage B's rows are its texts (caption, description), C's captions, D's the instruction mix."""

    def __init__(self, stage: str, tokenizer_dir: str, seed: int, spec, per_image: int, max_len: int):
        from tokenizers import Tokenizer

        from lvlm_guard.embedded.organism.text import world_stats
        from lvlm_guard.embedded.world.render import RenderConfig
        from lvlm_guard.embedded.world.scenes import SamplingConfig

        self.stage, self.spec, self.per_image, self.max_len = stage, spec, per_image, max_len
        self.core = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        self.pad, self.eos = self.core.token_to_id("<pad>"), self.core.token_to_id("</s>")
        self.rng = np.random.default_rng(seed)
        self.stats = world_stats() if stage == "instruct" else None
        self.render = RenderConfig(size=spec.image_size)
        self.sampling = SamplingConfig()  # the train split's companion omission rate
        self.truncated = 0
        self.counter = 0

    def fill(self, images: np.ndarray, ids: np.ndarray, mask: np.ndarray, has_image: np.ndarray) -> None:
        from lvlm_guard.embedded.organism import instruct
        from lvlm_guard.embedded.world.scenes import sample_scene

        rng = self.rng
        ids.fill(self.pad)
        mask.fill(False)
        for i in range(images.shape[0]):
            self.counter += 1
            kinds = instruct.draw_kinds(rng, self.per_image) if self.stage == "instruct" else []
            rich = self.stage == "vit" or "detail" in kinds or "text" in kinds
            scene = instruct.rich_scene(rng, self.sampling, tries=3 if self.stage == "vit" else 30) if rich \
                else sample_scene(rng, self.sampling)  # fmt: skip
            images[i], facts = instruct.render_facts(scene, self.counter, self.render)
            for j in range(self.per_image):
                r = i * self.per_image + j
                if self.stage == "vit":
                    text = instruct.caption_texts(facts, rng)[j % 2]
                    row = self.core.encode(text, add_special_tokens=False).ids[: self.max_len - 1] + [self.eos]
                    ids[r, : len(row)] = row
                    has_image[r] = True
                    continue
                sample = instruct.pretrain_sample(facts, rng) if self.stage == "projector" else \
                    instruct.sample_for(kinds[j], facts, rng, self.stats)  # fmt: skip
                row, loss, cut = instruct.encode(sample, self.core, self.spec.image_tokens, self.max_len)
                self.truncated += cut
                ids[r, : len(row)], mask[r, : len(row)], has_image[r] = row, loss, sample.image


def _layout(workers: int, slots: int, chunk: int, per_image: int, max_len: int, size: int):
    n = max(1, workers) * slots
    return {
        "images": ((n, chunk, size, size, 3), np.uint8), "ids": ((n, chunk * per_image, max_len), np.int32),
        "mask": ((n, chunk * per_image, max_len), np.bool_), "has_image": ((n, chunk * per_image), np.bool_),
    }  # fmt: skip


def _worker(wid, cfg, names, layout, free_q, ready_q):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    shms = {k: shared_memory.SharedMemory(name=names[k]) for k in layout}
    arrays = {k: np.ndarray(shape, dtype=dt, buffer=shms[k].buf) for k, (shape, dt) in layout.items()}
    writer = ChunkWriter(cfg["stage"], cfg["tokenizer"], cfg["seed"], cfg["spec"], cfg["per_image"], cfg["max_len"])
    while True:
        slot = free_q.get()
        if slot is None:
            break
        writer.fill(*(arrays[k][slot] for k in ("images", "ids", "mask", "has_image")))
        ready_q.put((slot, writer.truncated))
    for s in shms.values():
        s.close()


class DataPipe:
    """`workers` processes (0: in this process, for tests) filling chunks in shared memory;
    `chunk()` returns the next chunk round-robin over workers, as numpy copies."""

    def __init__(self, stage, args, spec, per_image, max_len, chunk, slots=4):
        self.workers = args.workers
        self.layout = _layout(self.workers, slots, chunk, per_image, max_len, spec.image_size)
        base = args.seed * 1000 + STAGE_SEED[stage] * 100
        cfg = {"stage": stage, "tokenizer": args.tokenizer, "spec": spec, "per_image": per_image, "max_len": max_len}
        self.truncated = 0
        if self.workers == 0:
            self.writer = ChunkWriter(stage, args.tokenizer, base, spec, per_image, max_len)
            self.local = {k: np.zeros(shape[1:], dt) for k, (shape, dt) in self.layout.items()}
            return
        self.shms = {k: shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(s)) * np.dtype(d).itemsize))
                     for k, (s, d) in self.layout.items()}  # fmt: skip
        self.arrays = {k: np.ndarray(s, dtype=d, buffer=self.shms[k].buf) for k, (s, d) in self.layout.items()}
        ctx = mp.get_context("spawn")
        self.free = [ctx.Queue() for _ in range(self.workers)]
        self.ready = [ctx.Queue() for _ in range(self.workers)]
        self.procs = []
        for w in range(self.workers):
            for s in range(slots):
                self.free[w].put(w * slots + s)
            p = ctx.Process(target=_worker, daemon=True, args=(
                w, {**cfg, "seed": base + w}, {k: v.name for k, v in self.shms.items()}, self.layout,
                self.free[w], self.ready[w]))  # fmt: skip
            p.start()
            self.procs.append(p)
        self.turn, self.wait_s = 0, 0.0

    def chunk(self) -> dict[str, np.ndarray]:
        if self.workers == 0:
            self.writer.fill(*(self.local[k] for k in ("images", "ids", "mask", "has_image")))
            self.truncated = self.writer.truncated
            return {k: v.copy() for k, v in self.local.items()}
        w = self.turn % self.workers
        self.turn += 1
        t = time.perf_counter()
        while True:
            try:
                slot, truncated = self.ready[w].get(timeout=10)
                break
            except queue.Empty:
                if not self.procs[w].is_alive():
                    raise RuntimeError(f"data worker {w} died (exit code {self.procs[w].exitcode})") from None
        self.wait_s += time.perf_counter() - t
        self.truncated += truncated  # cumulative per worker; approximate total for the log
        out = {k: self.arrays[k][slot].copy() for k in self.layout}
        self.free[w].put(slot)
        return out

    def close(self) -> None:
        if self.workers == 0:
            return
        for q in self.free:
            q.put(None)
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        for s in self.shms.values():
            s.close()
            s.unlink()


# -- shared training pieces ----------------------------------------------------------------------
def lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def load_spec(args):
    from lvlm_guard.embedded.organism.vlm import VisionSpec

    return VisionSpec.for_tests() if args.tiny else VisionSpec()


def load_lm(args, tokenizer):
    """The stage-A LM (dequantized int8), or for --tiny a random `LMSpec.for_tests()` one."""
    from lvlm_guard.embedded.organism.lm import LMSpec, build_model, load_organism_lm

    if args.tiny:
        spec = LMSpec(hidden_size=32, layers=2, heads=2, intermediate_size=64, vocab_size=len(tokenizer),
                      max_positions=512)  # fmt: skip
        return build_model(spec, seed=args.seed, tokenizer=tokenizer)
    return load_organism_lm(args.lm)[0]


def load_vision(path: str, spec):
    """A CLIPVisionModel from a stage-B output (vision.pt or an int8 folder)."""
    import torch
    from transformers import CLIPVisionModel

    from lvlm_guard.embedded.organism.lm import load_int8_state
    from lvlm_guard.embedded.organism.vlm import vision_config

    vision = CLIPVisionModel(vision_config(spec))
    p = Path(path)
    state = load_int8_state(p) if p.is_dir() else torch.load(p, map_location="cpu")
    vision.load_state_dict(state)
    return vision


class Run:
    """One stage's bookkeeping: schedule (fitted to --minutes after 30 timed steps), loss log, bar."""

    def __init__(self, stage: str, args, total: int, warmup: int, minutes: float):
        from tqdm import tqdm

        self.stage, self.total, self.warmup, self.minutes = stage, total, warmup, minutes
        self.dir = Path(args.out) / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = (self.dir / "loss.jsonl").open("w")
        self.start = time.time()
        self.step, self.t10 = 0, None
        self.cuda = args.device.startswith("cuda")
        self.bar = tqdm(total=total, desc=f"stage {stage}", mininterval=10 if self.cuda else 1)
        self.log_every = args.log_every
        self.record({"event": "start", "args": {k: v for k, v in vars(args).items() if k != "func"}})

    def record(self, obj: dict) -> None:
        self.log.write(json.dumps(obj) + "\n")
        self.log.flush()

    def done(self) -> bool:
        return self.step >= self.total or (self.minutes and time.time() - self.start > self.minutes * 60 + 30)

    def after_step(self, loss, lr: float, **extra) -> None:
        self.step += 1
        self.bar.update(1)
        if self.step == 10:
            self.t10 = time.time()
        if self.step == 40 and self.minutes and self.cuda:
            per_step = (time.time() - self.t10) / 30
            reachable = self.step + int((self.minutes * 60 - (time.time() - self.start)) / per_step)
            if reachable != self.total:
                self.record({"event": "refit", "from_steps": self.total, "to_steps": reachable, "step_s": per_step})
                self.total = max(self.step + 1, reachable)
                self.bar.total = self.total
        if self.step % self.log_every == 0 or self.step >= self.total:
            entry = {"step": self.step, "loss": round(float(loss), 4), "lr": lr,
                     "elapsed_s": round(time.time() - self.start, 1), **extra}  # fmt: skip
            self.record(entry)
            self.bar.set_postfix(loss=entry["loss"])

    def close(self, **summary) -> None:
        self.bar.close()
        self.record({"event": "trained", "step": self.step, "seconds": round(time.time() - self.start, 1), **summary})
        self.log.close()


def _device_batch(chunks, device):
    import torch

    out = {k: torch.from_numpy(np.concatenate([c[k] for c in chunks])) for k in chunks[0]}
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}


# -- stage B ---------------------------------------------------------------------------------------
def stage_vit(args) -> Path:
    """CLIP on world images; a GPU pool of `--pool` images refreshed by `--fresh` per step."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from lvlm_guard.embedded.organism.lm import save_int8_model
    from lvlm_guard.embedded.organism.vlm import ContrastivePair
    from lvlm_guard.embedded.tiny_data import pixel_values

    torch.manual_seed(args.seed)
    spec, device = load_spec(args), args.device
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    model = ContrastivePair(spec, len(tokenizer), tokenizer.pad_token_id)
    if args.resume:
        model.vision.load_state_dict(load_vision(args.resume, spec).state_dict())
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr_vit, betas=(0.9, 0.98), eps=1e-6, fused=cuda)  # CLIP's betas, wd 0.2
    chunk = min(64, args.fresh)
    pipe = DataPipe("vit", args, spec, per_image=2, max_len=spec.text_positions, chunk=chunk)
    size = spec.image_size
    pool_imgs = torch.zeros((args.pool, size, size, 3), dtype=torch.uint8, device=device)
    pool_ids = torch.zeros((args.pool, 2, spec.text_positions), dtype=torch.int32, device=device)
    filled, head = 0, 0
    gen = torch.Generator(device=device).manual_seed(args.seed)
    warmup = args.resume_warmup if args.resume else args.warmup_vit
    run = Run("vit", args, args.steps_vit, warmup, args.minutes_vit)
    step_fn = torch.compile(model.loss) if args.compile and cuda else model.loss

    def add(n_images: int):
        nonlocal filled, head
        for _ in range(max(1, n_images // chunk)):
            c = _device_batch([pipe.chunk()], device)
            n = c["images"].shape[0]
            idx = (torch.arange(n, device=device) + head) % args.pool
            pool_imgs[idx] = c["images"]
            pool_ids[idx] = c["ids"].view(n, 2, -1)
            head, filled = (head + n) % args.pool, min(args.pool, filled + n)

    fixed = None
    try:
        add(max(args.batch_vit, args.pool_min))
        if args.fixed_batch:
            fixed = torch.arange(args.batch_vit, device=device)
        while not run.done():
            if fixed is None:
                add(args.fresh)
                rows = torch.randint(0, filled, (args.batch_vit,), device=device, generator=gen)
            else:
                rows = fixed
            which = torch.randint(0, 2, (len(rows),), device=device, generator=gen) if fixed is None else rows % 2
            ids = pool_ids[rows, which].long()
            ids = ids[:, : int((ids != tokenizer.pad_token_id).sum(1).max())]
            lr = lr_at(run.step, run.total, warmup, args.lr_vit)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
                loss = step_fn(pixel_values(pool_imgs[rows]), ids)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.after_step(loss.detach(), lr, pool=filled, data_wait_s=round(getattr(pipe, "wait_s", 0.0), 1),
                           logit_scale=round(float(model.logit_scale.detach().exp()), 2))  # fmt: skip
    finally:
        pipe.close()
    vision = model.vision.cpu().float()
    torch.save(vision.state_dict(), run.dir / "vision.pt")
    save_int8_model(vision, run.dir / "int8")
    run.close(first_loss=None)
    (run.dir / "DONE").write_text("ok\n")
    return run.dir


# -- stages C and D ------------------------------------------------------------------------------
def multimodal_loss(llava, ids, mask, pixels, has_image, train_vision: bool = False):
    """LLaVA's forward by hand (same math as `LlavaForConditionalGeneration`: image features of
    the vision feature layer, CLS dropped, projected, scattered into the `<image>` positions), so
    the ViT runs without autograd and logits are computed only where the loss is.
    ids, mask [b, t]; pixels [n_images, 3, s, s] for the rows with has_image, in row order."""
    import torch
    import torch.nn.functional as F

    inner = llava.model
    lm = inner.language_model
    embeds = lm.embed_tokens(ids)  # [b, t, d]
    if pixels.shape[0]:
        with torch.set_grad_enabled(train_vision):
            out = inner.vision_tower(pixel_values=pixels, output_hidden_states=True)
            feats = out.hidden_states[llava.config.vision_feature_layer][:, 1:]  # [n, patches, dv]
        image = inner.multi_modal_projector(feats)  # [n, patches, d]
        where = (ids == llava.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(where, image.to(embeds.dtype))
    hidden = lm(inputs_embeds=embeds).last_hidden_state  # right padding: no mask needed (causal)
    target = mask[:, 1:]
    logits = llava.lm_head(hidden[:, :-1][target])  # [n_loss, vocab]
    return F.cross_entropy(logits.float(), ids[:, 1:][target])


def _assemble(args, tokenizer, spec):
    """The LLaVA from the stage-A LM, the stage-B ViT and (if given) a projector or a whole LLaVA."""
    import torch

    from lvlm_guard.embedded.organism.vlm import build_llava

    vision = load_vision(args.vit, spec)
    llava = build_llava(load_lm(args, tokenizer), vision, spec, tokenizer, seed=args.seed)
    if getattr(args, "projector", ""):
        llava.model.multi_modal_projector.load_state_dict(torch.load(args.projector, map_location="cpu"))
    if getattr(args, "llava", ""):
        llava.load_state_dict(torch.load(args.llava, map_location="cpu"), strict=False)
        llava.tie_weights()
    return llava


def stage_lm(args, stage: str) -> Path:
    """Stage C (projector only, captions) or D (projector + LM, the instruction mix)."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from lvlm_guard.embedded.tiny_data import pixel_values

    torch.manual_seed(args.seed)
    spec, device = load_spec(args), args.device
    cuda = device.startswith("cuda")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    llava = _assemble(args, tokenizer, spec)
    if args.resume:
        llava.load_state_dict(torch.load(args.resume, map_location="cpu"), strict=False)
        llava.tie_weights()
    llava.to(device)
    for p in llava.parameters():
        p.requires_grad_(False)
    trained = [llava.model.multi_modal_projector]
    if stage == "instruct":
        trained.append(llava.model.language_model)
    params = [p for m in trained for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    llava.train()
    llava.model.vision_tower.eval()
    lr_peak = args.lr_projector if stage == "projector" else args.lr_instruct
    opt = torch.optim.AdamW(params, lr=lr_peak, betas=(0.9, 0.95), weight_decay=0.0, fused=cuda)
    per_image = args.per_image
    max_len = spec.image_tokens + (96 if stage == "projector" else args.max_text)
    chunk = max(1, args.batch // (args.chunks_per_batch * per_image))
    pipe = DataPipe(stage, args, spec, per_image=per_image, max_len=max_len, chunk=chunk)
    steps = args.steps_projector if stage == "projector" else args.steps_instruct
    minutes = args.minutes_projector if stage == "projector" else args.minutes_instruct
    warmup = args.resume_warmup if args.resume else max(1, int(0.03 * steps))  # LLaVA: 3% warm-up
    run = Run(stage, args, steps, warmup, minutes)
    loss_fn = torch.compile(multimodal_loss, dynamic=True) if args.compile and cuda else multimodal_loss
    fixed = None
    try:
        while not run.done():
            if fixed is None:
                batch = _device_batch([pipe.chunk() for _ in range(args.chunks_per_batch)], device)
                if args.fixed_batch:
                    fixed = batch
            else:
                batch = fixed
            ids, mask = batch["ids"].long(), batch["mask"]
            width = int((ids != tokenizer.pad_token_id).sum(1).max())
            width = min(ids.shape[1], -(-width // 64) * 64)  # buckets of 64: few shapes to compile
            ids, mask = ids[:, :width], mask[:, :width]
            img_of_row = torch.arange(len(batch["images"]), device=device).repeat_interleave(per_image)
            pixels = pixel_values(batch["images"][img_of_row[batch["has_image"]]])
            lr = lr_at(run.step, run.total, warmup, lr_peak)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(llava, ids, mask, pixels, batch["has_image"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.after_step(loss.detach(), lr, data_wait_s=round(getattr(pipe, "wait_s", 0.0), 1),
                           tokens=int(width * len(ids)), truncated=int(pipe.truncated))  # fmt: skip
    finally:
        pipe.close()
    llava.cpu().float().eval()
    if stage == "projector":
        torch.save(llava.model.multi_modal_projector.state_dict(), run.dir / "projector.pt")
    else:
        state = {k: v for k, v in llava.state_dict().items() if "vision_tower" not in k}
        torch.save(state, run.dir / "llava.pt")
    run.close()
    (run.dir / "DONE").write_text("ok\n")
    return run.dir


# -- export ----------------------------------------------------------------------------------------
def export(args) -> Path:
    """int8 LLaVA + processor into --out/export; checks on the dequantized model."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from lvlm_guard.embedded.organism.lm import load_int8_pretrained, save_int8_model
    from lvlm_guard.embedded.organism.vlm import build_processor

    spec = load_spec(args)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    llava = _assemble(args, tokenizer, spec).eval()
    folder = Path(args.export_dir or Path(args.out) / "export")
    if folder.exists():
        shutil.rmtree(folder)
    save_int8_model(llava, folder)
    build_processor(tokenizer, spec).save_pretrained(folder)
    for name in ("loss.jsonl",):
        for stage in STAGES:
            src = Path(args.out) / stage / name
            if src.is_file():
                shutil.copy(src, folder / f"{stage}_{name}")
    model, processor = load_int8_pretrained(folder, dtype=torch.float32, device_map=args.device)
    report = {"shards": {p.name: p.stat().st_size for p in sorted(folder.glob("*.xz"))},
              "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    report.update(quick_check(model, processor, spec, args))
    (folder / "training.json").write_text(json.dumps(report, indent=1))
    (folder / "DONE").write_text("ok\n")
    print(json.dumps(report))
    return folder


def quick_check(model, processor, spec, args, questions: int = 300) -> dict:
    """Yes/no accuracy (first-token logit of " Yes" vs " No") on fresh images, POPE's wording,
    balanced; one greedy description."""
    import torch

    from lvlm_guard.embedded.organism import instruct
    from lvlm_guard.embedded.organism.text import world_stats
    from lvlm_guard.embedded.world.instructions import InstructionConfig, existence_turns
    from lvlm_guard.embedded.world.render import RenderConfig
    from lvlm_guard.embedded.world.scenes import SamplingConfig, sample_scene

    rng = np.random.default_rng(args.seed + 777_000)  # never a training worker's seed
    stats, config = world_stats(), InstructionConfig()
    tok = processor.tokenizer
    yes, no = tok.convert_tokens_to_ids(tok.tokenize(" Yes"))[0], tok.convert_tokens_to_ids(tok.tokenize(" No"))[0]
    correct = total = said_yes = 0
    sample_text = ""
    device = next(model.parameters()).device
    while total < (questions if not args.tiny else 12):
        image, facts = instruct.render_facts(sample_scene(rng, SamplingConfig(0.3)), 0, RenderConfig(size=spec.image_size))
        from PIL import Image

        pil = Image.fromarray(image)
        for q, _, label in existence_turns(facts, rng, stats, config):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = processor(images=pil, text=prompt, return_tensors="pt").to(device)
            with torch.no_grad():
                logits = model(**inputs).logits[0, -1]
            pred = bool(logits[yes] > logits[no])
            correct += pred == label
            said_yes += pred
            total += 1
        if not sample_text:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image in detail."}]}]  # fmt: skip
            inputs = processor(images=pil, text=processor.apply_chat_template(messages, add_generation_prompt=True),
                               return_tensors="pt").to(device)  # fmt: skip
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=24 if args.tiny else 160, do_sample=False)
            sample_text = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return {"yes_no_accuracy": round(correct / total, 4), "yes_rate": round(said_yes / total, 4),
            "questions": total, "sample_description": sample_text}  # fmt: skip


def collect(args) -> None:
    """Copy what has finished under --out into --dest (<= 8 files, each <= 16 MiB): the export, or
    else the latest stage's small weights (ViT int8, projector), plus logs."""
    out, dest = Path(args.out), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if (out / "export" / "DONE").is_file():
        files = sorted(p for p in (out / "export").iterdir() if p.is_file())
    else:
        if (out / "vit" / "DONE").is_file():
            files += sorted((out / "vit" / "int8").iterdir())
        if (out / "projector" / "DONE").is_file():
            files.append(out / "projector" / "projector.pt")
        files += [p for p in (out / s / "loss.jsonl" for s in STAGES) if p.is_file()]
    big = [p for p in files if p.stat().st_size > 16 * 2**20]
    if big:
        raise RuntimeError(f"files over 16 MiB: {big}")
    import tarfile

    small = [p for p in files if p.stat().st_size < 2**20]  # one tar: at most 8 files come back per call
    for p in files:
        if p not in small:
            shutil.copy(p, dest / (p.name if p.parent.name == "export" else f"{p.parent.name}_{p.name}"))
    with tarfile.open(dest / "small.tar", "w") as tar:
        for p in small:
            tar.add(p, arcname=str(p.relative_to(out)))
    print(f"collected {len(files)} files into {dest} ({len(small)} in small.tar): {[p.name for p in files]}")


def run_all(args) -> None:
    args.vit = str(stage_vit(args) / "vision.pt")
    args.projector = str(stage_lm(args, "projector") / "projector.pt")
    args.llava = str(stage_lm(args, "instruct") / "llava.pt")
    args.resume = ""
    export(args)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=("vit", "projector", "instruct", "export", "all", "collect"))
    p.add_argument("--out", default="/tmp/v2", help="stage folders <out>/<stage>/ and <out>/export/")
    p.add_argument("--dest", default="", help="collect: where to copy")
    p.add_argument("--export-dir", default="")
    p.add_argument("--tokenizer", default=STAGE_A)
    p.add_argument("--lm", default=STAGE_A, help="stage-A int8 folder")
    p.add_argument("--vit", default="", help="stage B output: vision.pt or its int8 folder")
    p.add_argument("--projector", default="", help="stage C output: projector.pt")
    p.add_argument("--llava", default="", help="stage D output: llava.pt (LM + projector)")
    p.add_argument("--resume", default="", help="weights of this stage to start from (fresh optimiser)")
    p.add_argument("--resume-warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny ViT and random tiny LM: CPU tests")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--fixed-batch", action="store_true", help="tests: the first batch over and over")
    # stage B (CLIP's betas 0.9/0.98 and wd 0.2; lr and batch ours for a 4 M ViT)
    p.add_argument("--steps-vit", type=int, default=6000)
    p.add_argument("--minutes-vit", type=float, default=0.0)
    p.add_argument("--batch-vit", type=int, default=1024)
    p.add_argument("--lr-vit", type=float, default=1e-3)
    p.add_argument("--warmup-vit", type=int, default=200)
    p.add_argument("--pool", type=int, default=65536, help="GPU pool of images (uint8, 9.9 GB at 224 px)")
    p.add_argument("--pool-min", type=int, default=8192, help="images in the pool before the first step")
    p.add_argument("--fresh", type=int, default=256, help="new images into the pool per step")
    # stages C and D
    p.add_argument("--batch", type=int, default=128, help="sequences per step (C and D)")
    p.add_argument("--per-image", type=int, default=2, help="sequences per rendered image")
    p.add_argument("--chunks-per-batch", type=int, default=8)
    p.add_argument("--max-text", type=int, default=256, help="stage D: text tokens beside the image")
    p.add_argument("--steps-projector", type=int, default=3000)
    p.add_argument("--minutes-projector", type=float, default=0.0)
    p.add_argument("--lr-projector", type=float, default=1e-3)  # LLaVA-1.5 stage 1
    p.add_argument("--steps-instruct", type=int, default=12000)
    p.add_argument("--minutes-instruct", type=float, default=0.0)
    p.add_argument("--lr-instruct", type=float, default=1e-4)  # stage A's 1e-3 / 10 (LLaVA: ~1/15)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.cmd == "collect":
        return collect(args)
    if args.tiny:
        args.log_every = min(args.log_every, 1)
    if args.cmd == "vit":
        return stage_vit(args)
    if args.cmd in ("projector", "instruct"):
        return stage_lm(args, args.cmd)
    if args.cmd == "export":
        return export(args)
    return run_all(args)


if __name__ == "__main__":
    main()
