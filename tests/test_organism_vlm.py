"""Organism v2 stages B-D (issue 18): each stage learns, the export round-trips through `lg.load`,
int8 stays within its bound, and the instruction mix is what `organism/instruct.py` says."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

import lvlm_guard as lg
from lvlm_guard.embedded.organism import instruct
from lvlm_guard.embedded.organism.lm import (
    MANIFEST,
    dequantize_int8,
    load_int8_state,
    quantize_int8,
    save_int8_model,
)
from lvlm_guard.embedded.organism.text import world_stats
from lvlm_guard.embedded.organism.vlm import SYSTEM_PROMPT, VisionSpec, build_processor
from lvlm_guard.embedded.world.scenes import SamplingConfig, sample_scene

ROOT = Path(__file__).resolve().parents[1]
STAGE_A = ROOT / "lvlm_guard/embedded/checkpoints/organism-v2-stage-a"
_spec = importlib.util.spec_from_file_location("train_organism_vlm", ROOT / "scripts/train_organism_vlm.py")
trainer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trainer)

TINY = ["--tiny", "--device", "cpu", "--workers", "0", "--fixed-batch", "--log-every", "1"]


def _losses(folder: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (folder / "loss.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """B, C, D on the tiny config, each a few steps on one fixed batch, then the export."""
    out = tmp_path_factory.mktemp("v2")
    common = [*TINY, "--out", str(out)]
    vit = trainer.main(["vit", *common, "--steps-vit", "8", "--batch-vit", "16", "--pool", "16", "--pool-min", "16",
                        "--fresh", "16", "--lr-vit", "3e-3"])  # fmt: skip
    small = ["--batch", "8", "--chunks-per-batch", "1", "--vit", str(vit / "int8")]
    proj = trainer.main(["projector", *common, *small, "--steps-projector", "8", "--lr-projector", "3e-2"])
    inst = trainer.main(["instruct", *common, *small, "--projector", str(proj / "projector.pt"),
                         "--steps-instruct", "8", "--lr-instruct", "1e-2"])  # fmt: skip
    export = trainer.main(["export", *common, "--vit", str(vit / "int8"), "--llava", str(inst / "llava.pt")])
    return {"vit": vit, "projector": proj, "instruct": inst, "export": export, "out": out}


@pytest.mark.parametrize("stage", ["vit", "projector", "instruct"])
def test_each_stage_lowers_its_loss_on_a_fixed_batch(stages, stage):
    losses = _losses(stages[stage])
    assert len(losses) == 8
    # projector only, into a random tiny LM near log(vocab): a small but real fall (frozen: none)
    assert losses[-1] < losses[0] - (0.01 if stage == "projector" else 0.05), losses


def test_frozen_parts_stay_frozen(stages):
    """C trains the projector only: the LM it saves nothing of; D leaves the ViT as B made it."""
    vit = load_int8_state(stages["vit"] / "int8")
    model, _ = lg.load(str(stages["export"]))
    tower = model.model.vision_tower.state_dict()
    for name, value in vit.items():
        assert torch.equal(dequantize_int8(*quantize_int8(value)) if value.ndim == 2 else value, tower[name]), name
    assert set(torch.load(stages["projector"] / "projector.pt")) == {
        "linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}  # fmt: skip


def _dequantized_in_memory(stages):
    """The in-memory LLaVA of the export, with every matrix through int8 and back."""
    args = trainer.parse_args(["export", *TINY, "--vit", str(stages["vit"] / "int8"),
                               "--llava", str(stages["instruct"] / "llava.pt")])  # fmt: skip
    tokenizer = PreTrainedTokenizerFast.from_pretrained(STAGE_A)
    model = trainer._assemble(args, tokenizer, VisionSpec.for_tests()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(dequantize_int8(*quantize_int8(p)))
    return model


def test_export_round_trips_through_lg_load_with_identical_greedy_generation(stages):
    folder = stages["export"]
    assert (folder / MANIFEST).is_file() and not list(folder.glob("*.safetensors"))
    assert all(p.stat().st_size <= 16 * 2**20 for p in folder.glob("*.xz"))
    loaded, processor = lg.load(str(folder))
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    reference = _dequantized_in_memory(stages)
    rng = np.random.default_rng(5)
    image, _ = instruct.render_facts(sample_scene(rng), 0, trainer.ChunkWriter(
        "projector", str(STAGE_A), 0, VisionSpec.for_tests(), 1, 64).render)  # fmt: skip
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith(SYSTEM_PROMPT + " USER: <image>\n")
    inputs = processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
    with torch.no_grad():
        a = loaded.generate(**inputs, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        b = reference.generate(**inputs, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        la, lb = loaded(**inputs).logits, reference(**inputs).logits
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)


def test_hand_written_forward_equals_llava_forward(stages):
    """The trainer's `multimodal_loss` is LLaVA's math: same loss as the stock forward's logits."""
    model = _dequantized_in_memory(stages)
    spec = VisionSpec.for_tests()
    writer = trainer.ChunkWriter("instruct", str(STAGE_A), 3, spec, 2, spec.image_tokens + 200)
    images = np.zeros((2, spec.image_size, spec.image_size, 3), np.uint8)
    ids = np.zeros((4, spec.image_tokens + 200), np.int32)
    mask, has = np.zeros(ids.shape, bool), np.zeros(4, bool)
    writer.fill(images, ids, mask, has)
    from lvlm_guard.embedded.tiny_data import pixel_values

    for r in range(4):
        if not has[r]:
            continue
        x, m = torch.from_numpy(ids[r : r + 1]).long(), torch.from_numpy(mask[r : r + 1])
        px = pixel_values(torch.from_numpy(images[r // 2 : r // 2 + 1]))
        with torch.no_grad():
            ours = trainer.multimodal_loss(model, x, m, px, torch.tensor([True]))
            logits = model(input_ids=x, pixel_values=px).logits[0, :-1][m[0, 1:]]
            stock = torch.nn.functional.cross_entropy(logits, x[0, 1:][m[0, 1:]])
        torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)


def test_int8_dequantized_weights_are_within_the_quantization_bound(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.LayerNorm(96), torch.nn.Linear(96, 40))
    model[2].weight.data[3] *= 50  # one loud row: its own scale
    from transformers import PretrainedConfig

    model.config = PretrainedConfig()
    model.can_generate = lambda: False
    paths = save_int8_model(model, tmp_path, max_shard_bytes=4000)
    assert len(paths) > 1  # sharded by size
    state = load_int8_state(tmp_path)
    for name, w in model.state_dict().items():
        w64 = w.double()
        if w.ndim == 2:
            bound = w64.abs().amax(dim=1, keepdim=True) / 254 * (1 + 1e-6) + 1e-12  # half a step per row
            assert ((state[name].double() - w64).abs() <= bound).all(), name
        else:
            assert torch.equal(state[name], w.float()), name


def test_instruction_mix_has_the_stated_proportions_and_balanced_yes_no():
    rng = np.random.default_rng(0)
    kinds = instruct.draw_kinds(rng, 20000)
    for kind, share in instruct.MIX.items():
        assert abs(kinds.count(kind) / len(kinds) - share) < 0.012, kind
    stats, labels, strategies = world_stats(scenes=300), [], set()
    for i in range(400):
        _, facts = instruct.render_facts(sample_scene(rng, SamplingConfig()), i)
        for kind in ("existence", "short"):
            s = instruct.sample_for(kind, facts, rng, stats)
            labels += [x for x in s.labels if x is not None]
            strategies |= set(s.strategies)
            for (q, a), label in zip(s.turns, s.labels):
                if label is not None:
                    assert a.startswith("Yes" if label else "No"), (q, a)
    assert 0.45 <= np.mean(labels) <= 0.55, np.mean(labels)
    assert strategies == {"random", "popular", "adversarial"}
    assert not instruct.sample_for("text", facts, rng, stats).image


def test_detailed_descriptions_run_80_to_120_words_naming_6_to_10_objects():
    rng = np.random.default_rng(1)
    words, named = [], []
    counts = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
    for i in range(80):
        _, facts = instruct.render_facts(instruct.rich_scene(rng, SamplingConfig()), i)
        text = instruct.long_description(facts, rng)
        words.append(len(text.split()))
        listing = re.search(r"In total, the .*? holds (.*?)\.", text).group(1)
        named.append(sum(counts[p.split()[0]] for p in re.split(r", | and ", listing)))
    words, named = np.array(words), np.array(named)
    assert ((words >= 80) & (words <= 120)).mean() >= 0.9, words
    assert ((named >= 6) & (named <= 10)).mean() >= 0.9, named


def test_every_sequence_has_the_system_prompt_before_the_image_and_matches_the_processor():
    core = Tokenizer.from_file(str(STAGE_A / "tokenizer.json"))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(STAGE_A)
    spec = VisionSpec.for_tests()
    processor = build_processor(tokenizer, spec)
    system = core.encode(SYSTEM_PROMPT, add_special_tokens=False).ids
    image_id = core.token_to_id("<image>")
    rng, stats = np.random.default_rng(2), world_stats(scenes=200)
    for i, kind in enumerate([*instruct.MIX, "pretrain"] * 3):
        _, facts = instruct.render_facts(sample_scene(rng), i)
        s = instruct.pretrain_sample(facts, rng) if kind == "pretrain" else instruct.sample_for(kind, facts, rng, stats)
        ids, mask, _ = instruct.encode(s, core, spec.image_tokens, 4096)
        assert ids[0] == core.token_to_id("<s>") and ids[1 : 1 + len(system)] == system, kind
        if s.image:
            assert ids.index(image_id) > len(system) and ids.count(image_id) == spec.image_tokens
        else:
            assert image_id not in ids
        messages = []
        for j, (user, answer) in enumerate(s.turns):
            content = ([{"type": "image"}] if s.image and j == 0 else []) + [{"type": "text", "text": user}]
            messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        text = processor.apply_chat_template(messages)
        text = text.replace("<image>", "<image>" * spec.image_tokens)
        assert tokenizer(text)["input_ids"] == ids, kind
        answers = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        assert answers == "".join(" " + a + "</s>" for _, a in s.turns), kind
