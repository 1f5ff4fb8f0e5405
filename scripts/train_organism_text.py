"""Stage A of issue 18: train the text-only LLaMA of the second-generation embedded model.

Two steps, both seeded:

  # 1. here (needs apt): Debian English -> tokenizer + token array (.debtext/, git-ignored)
  python scripts/train_organism_text.py prepare --work .debtext --tokenizer-out lvlm_guard/embedded/checkpoints/organism-v2-stage-a
  # 2. on the GPU: train, export int8, run the gate
  python scripts/train_organism_text.py train --english .debtext/english.u16.xz \
      --tokenizer lvlm_guard/embedded/checkpoints/organism-v2-stage-a --final /tmp/final --minutes 21

Data: every training sequence is <s> + documents joined by </s>, 1024 tokens; documents are the
world's procedural text (`lvlm_guard.embedded.organism.text`, generated fresh by worker processes at every
step) and, for `--english-share` of the tokens, random windows of the Debian English. Workers write
into shared memory and the trainer takes their chunks round-robin (the data are a function of the
seed and the worker count). Optimiser: AdamW (beta2 0.95, fused), linear warm-up then cosine to 10%,
weight decay on matrices only. `--resume` starts from weights with a fresh optimiser and a short
warm-up. The number of steps is `--tokens` / tokens per step, shortened once at step 50 if the
measured speed cannot reach it inside `--minutes` (the log says so).
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import multiprocessing as mp
import os
import queue
import shutil
import threading
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

ENGLISH_FILE = "english.u16.xz"


# -- prepare ---------------------------------------------------------------------------------------
def prepare(args) -> None:
    from lvlm_guard.embedded.organism import debian
    from lvlm_guard.embedded.organism.text import WorldText, vocabulary_text
    from lvlm_guard.embedded.organism.tokenizer import build_tokenizer

    work = Path(args.work)
    root = debian.download_and_extract(work)
    english = [doc for _, doc in debian.documents(root)]
    world = [vocabulary_text()] * 300 + WorldText(np.random.default_rng(args.seed + 999)).documents(20000)
    tokenizer = build_tokenizer(world, english)
    tokenizer.save_pretrained(args.tokenizer_out)
    encoded = tokenizer.backend_tokenizer.encode_batch(english, add_special_tokens=False)
    ids: list[int] = []
    for e in encoded:
        ids += e.ids + [tokenizer.eos_token_id]
    array = np.asarray(ids, dtype=np.uint16)
    (work / ENGLISH_FILE).write_bytes(lzma.compress(array.tobytes(), preset=6))
    print(f"{len(english)} English documents, {array.size} tokens -> {work / ENGLISH_FILE}; vocab {len(tokenizer)}")


def load_english(path: str | Path) -> np.ndarray:
    return np.frombuffer(lzma.decompress(Path(path).read_bytes()), dtype=np.uint16)


# -- data workers ----------------------------------------------------------------------------------
class SequenceWriter:
    """Packs documents into <s>-led sequences of `seq_len` tokens for one worker."""

    def __init__(
        self, tokenizer_dir, seed: int, seq_len: int, english: np.ndarray | None, english_share: float,
        scene_reuse: float = 0.0,
    ):  # fmt: skip
        from tokenizers import Tokenizer

        from lvlm_guard.embedded.organism.text import WorldText, world_stats

        self.core = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        self.bos, self.eos = self.core.token_to_id("<s>"), self.core.token_to_id("</s>")
        self.rng = np.random.default_rng(seed)
        self.gen = WorldText(np.random.default_rng([seed, 1]), stats=world_stats(), scene_reuse=scene_reuse)
        self.seq_len, self.english, self.english_share = seq_len, english, english_share
        self.stream: list[int] = []
        self.counts = {"world": 0, "english": 0}

    def _refill(self) -> None:
        total = self.counts["world"] + self.counts["english"]
        if self.english is not None and self.counts["english"] < self.english_share * (total + 1):
            length = min(int(self.rng.integers(128, 1024)), self.english.size - 1)
            start = int(self.rng.integers(0, self.english.size - length))
            chunk = self.english[start : start + length].tolist()
            self.stream += chunk + [self.eos]
            self.counts["english"] += len(chunk) + 1
            return
        docs = self.gen.documents(32)
        for enc in self.core.encode_batch(docs, add_special_tokens=False):
            self.stream += enc.ids + [self.eos]
            self.counts["world"] += len(enc.ids) + 1

    def sequence(self) -> list[int]:
        need = self.seq_len - 1
        while len(self.stream) < need:
            self._refill()
        body, self.stream = self.stream[:need], self.stream[need:]
        return [self.bos] + body


def _worker(wid, args_dict, shm_name, shape, free_q, ready_q):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    english = load_english(args_dict["english"]) if args_dict["english"] else None
    writer = SequenceWriter(
        args_dict["tokenizer"],
        args_dict["seed"] * 1000 + wid,
        args_dict["seq_len"],
        english,
        args_dict["english_share"],
        args_dict["scene_reuse"],
    )
    shm = shared_memory.SharedMemory(name=shm_name)
    buf = np.ndarray(shape, dtype=np.uint16, buffer=shm.buf)
    while True:
        slot = free_q.get()
        if slot is None:
            break
        for i in range(shape[1]):
            buf[slot, i] = writer.sequence()
        ready_q.put((slot, writer.counts["world"], writer.counts["english"]))
    shm.close()


class DataPipe:
    """`workers` processes, each owning `slots_per_worker` chunks of `chunk` sequences in shared
    memory; `batch()` gathers batch/chunk chunks round-robin over the workers."""

    def __init__(self, args, workers: int, chunk: int = 16, slots_per_worker: int = 6):
        self.workers, self.chunk, self.spw = workers, chunk, slots_per_worker
        self.shape = (workers * slots_per_worker, chunk, args.seq_len)
        self.shm = shared_memory.SharedMemory(create=True, size=int(np.prod(self.shape)) * 2)
        self.buf = np.ndarray(self.shape, dtype=np.uint16, buffer=self.shm.buf)
        ctx = mp.get_context("spawn")
        self.free = [ctx.Queue() for _ in range(workers)]
        self.ready = [ctx.Queue() for _ in range(workers)]
        args_dict = {
            "english": args.english, "tokenizer": args.tokenizer, "seed": args.seed,
            "seq_len": args.seq_len, "english_share": args.english_share, "scene_reuse": args.scene_reuse,
        }  # fmt: skip
        self.procs = []
        for w in range(workers):
            for s in range(slots_per_worker):
                self.free[w].put(w * slots_per_worker + s)
            p = ctx.Process(target=_worker, args=(w, args_dict, self.shm.name, self.shape, self.free[w], self.ready[w]))
            p.daemon = True
            p.start()
            self.procs.append(p)
        self.turn = 0
        self.counts = np.zeros((workers, 2), dtype=np.int64)
        self.wait_s = 0.0

    def batch(self, batch_size: int) -> np.ndarray:
        out = np.empty((batch_size, self.shape[2]), dtype=np.uint16)
        for c in range(batch_size // self.chunk):
            w = self.turn % self.workers
            self.turn += 1
            t = time.perf_counter()
            while True:
                try:
                    slot, world, english = self.ready[w].get(timeout=10)
                    break
                except queue.Empty:
                    if not self.procs[w].is_alive():  # a dead worker would otherwise hang the trainer
                        raise RuntimeError(f"data worker {w} died (exit code {self.procs[w].exitcode})") from None
            self.wait_s += time.perf_counter() - t
            self.counts[w] = (world, english)
            out[c * self.chunk : (c + 1) * self.chunk] = self.buf[slot]
            self.free[w].put(slot)
        return out

    def close(self) -> None:
        for q in self.free:
            q.put(None)
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        self.shm.close()
        self.shm.unlink()


# -- training --------------------------------------------------------------------------------------
def lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, lr: float, weight_decay: float, fused: bool):
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def export(model, tokenizer_dir: str, folder: Path, probe_model=None, gate_prompts=None) -> dict | None:
    """int8 weights + config + tokenizer into `folder`; with `gate_prompts`, the gate on the
    dequantized model too (gate.json, gate.md, gate.png)."""
    from lvlm_guard.embedded.organism import gate
    from lvlm_guard.embedded.organism.lm import load_int8_state, save_int8

    folder.mkdir(parents=True, exist_ok=True)
    save_int8(model, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        src = Path(tokenizer_dir) / name
        if src.is_file():
            shutil.copy(src, folder / name)
    if gate_prompts is None:
        return None
    probe_model.load_state_dict(load_int8_state(folder), strict=False)
    probe_model.tie_weights()
    report = gate.probe(probe_model.eval(), gate_prompts)
    (folder / "gate.json").write_text(json.dumps(report.to_json(), indent=1))
    (folder / "gate.md").write_text(gate.markdown(report))
    gate.plot(report, folder / "gate.png")
    return report.to_json()


def quick_gate(model, probe_model, prompts) -> dict:
    """The gate on the live (float) weights, for the log."""
    from lvlm_guard.embedded.organism import gate

    probe_model.load_state_dict(model.state_dict())
    r = gate.probe(probe_model.eval(), prompts)
    return {
        "bos_ratio": [round(x.bos_ratio, 1) for x in r.layers],
        "fixed_dims_share": [round(x.fixed_dims_share, 3) for x in r.layers],
        "fixed_dims": r.fixed_dims,
        "sink_head_share": round(r.sink_head_share, 3),
    }


def train(args) -> None:
    import torch
    from tqdm import tqdm
    from transformers import PreTrainedTokenizerFast

    from lvlm_guard.embedded.organism import gate
    from lvlm_guard.embedded.organism.lm import LMSpec, build_model, load_int8_state

    start = time.time()
    torch.manual_seed(args.seed)
    device = args.device
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    spec = LMSpec.for_tests(vocab_size=len(tokenizer)) if args.tiny else LMSpec(vocab_size=len(tokenizer))
    spec = LMSpec(**{**spec.__dict__, "max_positions": max(spec.max_positions, args.seq_len)})
    model = build_model(spec, seed=args.seed, tokenizer=tokenizer)
    if args.resume:
        state = load_int8_state(args.resume) if Path(args.resume).is_dir() else torch.load(args.resume)
        model.load_state_dict(state, strict=False)
        model.tie_weights()
    model.to(device)
    probe_model = build_model(spec, seed=0, tokenizer=tokenizer)
    probe_model.config._attn_implementation = "eager"
    probe_model.to(device)
    prompts = gate.probe_prompts(tokenizer, seed=args.seed + 10_000, count=8 if args.tiny else 16,
                                 length=min(512, args.seq_len))  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "loss.jsonl"
    log = log_path.open("a" if args.resume else "w")

    def record(obj):
        log.write(json.dumps(obj) + "\n")
        log.flush()

    record({"event": "start", "params": params, "spec": spec.__dict__, "args": vars(args)})
    cuda = device.startswith("cuda")
    opt = make_optimizer(model, args.lr, args.weight_decay, fused=cuda)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    step_fn_model = torch.compile(model) if args.compile else model
    tokens_per_step = args.batch * args.seq_len
    total = max(1, args.tokens // tokens_per_step) if args.steps is None else args.steps
    warmup = args.warmup if not args.resume else args.resume_warmup
    fixed = None
    if args.fixed_batch:  # for tests: one batch over and over
        from_pipe = None
        rng = np.random.default_rng(args.seed)
        fixed = torch.from_numpy(rng.integers(5, len(tokenizer), (args.batch, args.seq_len))).long()
        fixed[:, 0] = tokenizer.bos_token_id
    else:
        from_pipe = DataPipe(args, args.workers, chunk=min(16, args.batch))
    last_ckpt = time.time()
    t_loop = time.time()
    tokens = 0
    bar = tqdm(total=total, desc="stage A", mininterval=10 if cuda else 1)
    step = 0
    try:
        while step < total:
            if fixed is not None:
                x = fixed
            else:
                x = torch.from_numpy(from_pipe.batch(args.batch).astype(np.int64))
            x = x.to(device, non_blocking=True)
            lr = lr_at(step, total, warmup, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
                loss = step_fn_model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            bar.update(1)
            if step == 10:
                t_loop, tokens_at_10 = time.time(), tokens
            if step == 50 and args.minutes and cuda:
                rate = (tokens - tokens_at_10) / (time.time() - t_loop)
                left = args.minutes * 60 - (time.time() - start) - args.reserve_s
                reachable = step + int(left * rate / tokens_per_step)
                if reachable < total:
                    record({"event": "shorten", "from_steps": total, "to_steps": reachable, "tokens_per_s": rate})
                    total = reachable
                    bar.total = total
            if step % args.log_every == 0 or step == total:
                elapsed = time.time() - start
                rate = (tokens - tokens_at_10) / (time.time() - t_loop) if step > 10 else 0.0
                entry = {
                    "step": step, "tokens": tokens, "loss": round(float(loss.detach()), 4), "lr": lr,
                    "tokens_per_s": round(rate), "elapsed_s": round(elapsed, 1),
                    "data_wait_s": round(from_pipe.wait_s, 1) if from_pipe else 0.0,
                }  # fmt: skip
                if from_pipe is not None:
                    world, english = from_pipe.counts.sum(axis=0)
                    entry["english_share"] = round(float(english / max(1, world + english)), 3)
                record(entry)
                bar.set_postfix(loss=entry["loss"], tps=entry["tokens_per_s"])
            if args.ckpt_dir and time.time() - last_ckpt > args.ckpt_every_s:
                last_ckpt = time.time()
                ckpt = Path(args.ckpt_dir)
                ckpt.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), ckpt / "model.pt.tmp")
                os.replace(ckpt / "model.pt.tmp", ckpt / "model.pt")
                record({"event": "checkpoint", "step": step, "gate": quick_gate(model, probe_model, prompts[:4])})
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                threading.Thread(target=_export_cpu, args=(state, spec, tokenizer, args.tokenizer, ckpt / "int8"),
                                 daemon=True).start()  # fmt: skip
            if args.minutes and time.time() - start > args.minutes * 60:
                record({"event": "time_limit", "step": step})
                break
    finally:
        bar.close()
        if from_pipe is not None:
            from_pipe.close()
    record({"event": "trained", "step": step, "tokens": tokens, "seconds": round(time.time() - start, 1)})
    if args.final:
        final = Path(args.final)
        report = export(model, args.tokenizer, final, probe_model, prompts)
        record({"event": "gate", "report": report})
        log.close()
        shutil.copy(log_path, final / "loss.jsonl")
        plot_loss(log_path, final / "loss.png")
        (final / "training.json").write_text(
            json.dumps(
                {
                    "params": params,
                    "spec": spec.__dict__,
                    "args": vars(args),
                    "steps": step,
                    "tokens": tokens,
                    "seconds": round(time.time() - start, 1),
                },
                indent=1,
            )  # fmt: skip
        )
        (final / "DONE").write_text("ok\n")
    else:
        log.close()


def _export_cpu(state, spec, tokenizer, tokenizer_dir, folder: Path) -> None:
    from lvlm_guard.embedded.organism.lm import build_model

    model = build_model(spec, tokenizer=tokenizer)
    model.load_state_dict(state)
    tmp = folder.with_name(folder.name + ".tmp")
    export(model, tokenizer_dir, tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def plot_loss(log_path: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["tokens"] / 1e9 for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("tokens (billions)")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work", default=".debtext")
    p.add_argument("--tokenizer-out", default="lvlm_guard/embedded/checkpoints/organism-v2-stage-a")
    p.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--tokenizer", default="lvlm_guard/embedded/checkpoints/organism-v2-stage-a")
    t.add_argument("--english", default=".debtext/" + ENGLISH_FILE, help="'' for world text only")
    t.add_argument("--english-share", type=float, default=0.15)  # issue 18's brief: mostly world text
    t.add_argument("--scene-reuse", type=float, default=0.75, help="P(a document reuses a pooled scene)")
    t.add_argument("--out", default="/tmp/stage_a")
    t.add_argument("--final", default="", help="folder for int8 weights, gate and logs at the end")
    t.add_argument("--ckpt-dir", default="", help="weights every --ckpt-every-s (model.pt and int8/)")
    t.add_argument("--ckpt-every-s", type=float, default=180)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cuda")
    t.add_argument("--tiny", action="store_true", help="LMSpec.for_tests(): CPU smoke runs and tests")
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--seq-len", type=int, default=1024)
    t.add_argument("--tokens", type=int, default=2_500_000_000)
    t.add_argument("--steps", type=int, default=None, help="overrides --tokens")
    t.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget (0: none)")
    t.add_argument("--reserve-s", type=float, default=20.0, help="time kept back for checkpoints")
    t.add_argument("--lr", type=float, default=1e-3)  # issue 18: high learning rate (~1e-3)
    t.add_argument("--weight-decay", type=float, default=0.5)  # Gu et al. 2025: wd 0.5 gives most sink heads
    t.add_argument("--warmup", type=int, default=500)
    t.add_argument("--resume", default="", help="weights (model.pt or int8 folder): fresh optimiser")
    t.add_argument("--resume-warmup", type=int, default=100)
    t.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--log-every", type=int, default=20)
    t.add_argument("--fixed-batch", action="store_true", help="tests: train on one random batch")
    args = parser.parse_args(argv)
    prepare(args) if args.cmd == "prepare" else train(args)


if __name__ == "__main__":
    main()
