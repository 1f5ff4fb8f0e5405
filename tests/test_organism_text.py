"""Stage A of issue 18: world text generator, tokenizer, int8 export, gate probes and the trainer."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lvlm_guard.embedded.organism import gate
from lvlm_guard.embedded.organism.lm import (
    LMSpec,
    build_model,
    dequantize_int8,
    load_int8_state,
    load_organism_lm,
    quantize_int8,
    save_int8,
)
from lvlm_guard.embedded.organism.text import DOC_KINDS, WorldText, world_stats
from lvlm_guard.embedded.world.categories import category, category_names

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "lvlm_guard" / "embedded" / "checkpoints" / "organism-v2-stage-a"


@pytest.fixture(scope="module")
def stats():
    return world_stats(scenes=300)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def trainer():
    # importable by name while the tests run, so that spawned data workers find `_worker` too
    sys.path.insert(0, str(ROOT / "scripts"))
    yield importlib.import_module("train_organism_text")
    sys.path.remove(str(ROOT / "scripts"))


# -- generator -------------------------------------------------------------------------------------
def test_generator_is_seeded(stats):
    a = WorldText(np.random.default_rng(7), stats=stats).documents(30)
    b = WorldText(np.random.default_rng(7), stats=stats).documents(30)
    c = WorldText(np.random.default_rng(8), stats=stats).documents(30)
    assert a == b
    assert a != c
    assert len(set(a)) > 25


@pytest.mark.parametrize("kind", DOC_KINDS)
def test_every_kind_writes_text(stats, kind):
    gen = WorldText(np.random.default_rng(3), stats=stats)
    docs = [getattr(gen, f"{kind}_doc")() for _ in range(20)]
    assert all(len(d.split()) >= 3 for d in docs)


def test_inventory_answers_are_right(stats):
    """Back-reference answers agree with the room's listing in the same document."""
    gen = WorldText(np.random.default_rng(11), stats=stats)
    checked = 0
    for _ in range(40):
        doc = gen.inventory_doc()
        holds = {}
        for line in doc.splitlines():
            if line.startswith("Room ") and " It holds " in line:
                rid = line.split()[1]
                holds[rid] = line.split(" It holds ", 1)[1]
            if line.startswith("Question: Is there"):
                rid = line.split(" in room ")[1].split("?")[0]
                name = line.split("Is there ")[1].split(" in room ")[0].split(" ", 1)[1]
                listed = any(
                    f" {form}" in f" {holds[rid]}".replace(",", " ").replace(".", " ") + " "
                    for form in (name, category(name).plural)
                )
                assert listed == line.endswith("Answer: yes."), (line, holds[rid])
                checked += 1
    assert checked > 5


def test_scene_reuse_pool_keeps_text_fresh(stats):
    gen = WorldText(np.random.default_rng(5), stats=stats, scene_reuse=0.9, pool_size=8)
    docs = [gen.scene_doc() for _ in range(40)]
    assert len(gen._pool) == 8
    assert len(set(docs)) == len(docs)


# -- tokenizer -------------------------------------------------------------------------------------
def test_tokenizer_round_trips_world_text(stats, tokenizer):
    core = tokenizer.backend_tokenizer
    docs = WorldText(np.random.default_rng(21), stats=stats).documents(40)
    for doc in docs:
        ids = core.encode(doc, add_special_tokens=False).ids
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == doc
    for name in category_names():  # object words are whole tokens after a space
        for word in (name, category(name).plural):
            assert all(len(core.encode(" " + w, add_special_tokens=False).ids) == 1 for w in word.split())


def test_tokenizer_keeps_v1_special_ids(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>", "<image>")]
    assert ids == [0, 1, 2, 3, 4]
    assert tokenizer("a cup").input_ids[0] == tokenizer.bos_token_id
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Is there a cup?"}, {"role": "assistant", "content": "Yes."}], tokenize=False
    )
    assert chat == "USER: Is there a cup? ASSISTANT: Yes.</s>"


def test_every_sequence_starts_with_bos(trainer, tokenizer):
    english = (np.arange(20000) % 300 + 5).astype(np.uint16)
    writer = trainer.SequenceWriter(CHECKPOINT, seed=0, seq_len=96, english=english, english_share=0.3)
    seqs = [writer.sequence() for _ in range(150)]
    assert all(len(s) == 96 and s[0] == tokenizer.bos_token_id for s in seqs)
    assert all(tokenizer.bos_token_id not in s[1:] for s in seqs)
    share = writer.counts["english"] / (writer.counts["english"] + writer.counts["world"])
    assert 0.2 < share < 0.4


# -- int8 ------------------------------------------------------------------------------------------
def test_int8_error_bound():
    w = torch.randn(64, 48, dtype=torch.float64) * torch.logspace(-3, 1, 64, dtype=torch.float64)[:, None]
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    err = (dequantize_int8(q, scale).double() - w).abs()
    bound = w.abs().amax(dim=1, keepdim=True) / 254 * (1 + 1e-5)
    assert (err <= bound).all()


def test_int8_save_load_round_trip(tmp_path):
    model = build_model(LMSpec.for_tests(), seed=1)
    save_int8(model, tmp_path)
    state = load_int8_state(tmp_path)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if tensor.ndim == 2:
            assert torch.equal(state[name], dequantize_int8(*quantize_int8(tensor)))
        else:
            assert torch.equal(state[name], tensor.float())


def test_shipped_checkpoint_loads():
    model, tokenizer = load_organism_lm(CHECKPOINT)
    ids = tokenizer("The image shows a kitchen.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert json.loads((CHECKPOINT / "config.json").read_text())["num_hidden_layers"] == 6
    weights = sum(p.stat().st_size for p in CHECKPOINT.glob("*.xz"))
    assert weights <= 18e6


# -- gate probes -----------------------------------------------------------------------------------
def _planted_sink_model():
    """A tiny random LLaMA whose BOS embedding is huge in dims 3 and 17: a planted massive activation
    that the residual stream carries through every layer."""
    spec = LMSpec(hidden_size=32, layers=5, heads=4, intermediate_size=64, vocab_size=64, max_positions=64)
    model = build_model(spec, seed=2)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[1] = 0.01 * torch.randn(32)
        emb[1, 3], emb[1, 17] = 40.0, -30.0
    return model.eval()


def test_gate_math_against_float64():
    model = _planted_sink_model()
    prompts = [torch.cat([torch.tensor([1]), torch.randint(5, 64, (40,))]) for _ in range(3)]
    report = gate.probe(model, prompts, min_query=8)
    assert [r.layer for r in report.layers] == [2, 3]
    assert report.fixed_dims == [3, 17]
    with torch.no_grad():
        outs = [model(input_ids=p[None], output_hidden_states=True, output_attentions=True) for p in prompts]
    for r in report.layers:
        hs = [o.hidden_states[r.layer + 1][0].double().numpy() for o in outs]
        ratio = np.mean([np.abs(h[0]).max() / np.median(np.abs(h)) for h in hs])
        assert r.bos_ratio == pytest.approx(ratio, rel=1e-6)
        bos = hs[0][0]
        assert r.fixed_dims_share == pytest.approx((bos[[3, 17]] ** 2).sum() / (bos**2).sum(), rel=1e-6)
        att = np.mean([o.attentions[r.layer][0].double().numpy()[:, 8:, 0].mean(axis=1) for o in outs], axis=0)
        np.testing.assert_allclose(r.head_bos_attention, att, rtol=1e-6)
    heads = np.concatenate([r.head_bos_attention for r in report.layers])
    assert report.sink_head_share == pytest.approx((heads >= 0.3).mean())
    assert report.massive_pass == all(r.bos_ratio >= 100 and r.fixed_dims_share >= 0.5 for r in report.layers)
    assert "gate" in gate.markdown(report)


def test_gate_fails_without_sink():
    model = build_model(LMSpec(hidden_size=32, layers=5, heads=4, intermediate_size=64, vocab_size=64), seed=3)
    model.config._attn_implementation = "eager"
    prompts = [torch.cat([torch.tensor([1]), torch.randint(5, 64, (40,))]) for _ in range(2)]
    report = gate.probe(model.eval(), prompts, min_query=8)
    assert not report.massive_pass and not report.passed


# -- trainer ---------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def test_trainer_two_steps_real_data(trainer, tmp_path):
    trainer.main([
        "train", "--tiny", "--device", "cpu", "--no-compile", "--steps", "2", "--batch", "4", "--seq-len", "64",
        "--workers", "1", "--english", "", "--out", str(tmp_path), "--log-every", "1", "--warmup", "1",
    ])  # fmt: skip
    rows = _rows(tmp_path / "loss.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_trainer_loss_decreases_on_fixed_batch(trainer, tmp_path):
    trainer.main([
        "train", "--tiny", "--device", "cpu", "--no-compile", "--steps", "20", "--batch", "4", "--seq-len", "32",
        "--fixed-batch", "--out", str(tmp_path), "--log-every", "1", "--warmup", "2", "--lr", "3e-3",
        "--weight-decay", "0.1",
    ])  # fmt: skip
    losses = [r["loss"] for r in _rows(tmp_path / "loss.jsonl")]
    assert len(losses) == 20 and np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.3


def test_lr_schedule(trainer):
    assert trainer.lr_at(0, 100, 10, 1e-3) == pytest.approx(1e-4)
    assert trainer.lr_at(9, 100, 10, 1e-3) == pytest.approx(1e-3)
    assert trainer.lr_at(100, 100, 10, 1e-3) == pytest.approx(1e-4)
