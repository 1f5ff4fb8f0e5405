"""Every supported family on a tiny random model: structure, image positions, guard lifecycle, PAI.

One module-scoped model per family; every test that attaches a guard detaches it in `finally`.
"""

from __future__ import annotations

import pytest
import torch
from contract import IMAGES, PROMPTS, STEPS
from tiny_families import FAMILIES, HEADS, KV_HEADS, LAYERS
from torch import nn
from transformers.quantizers.quantizers_utils import should_convert_module

import lvlm_guard as lg
from lvlm_guard.engine import attention
from lvlm_guard.models.gemma3 import Gemma3Adapter
from lvlm_guard.models.idefics3 import Idefics3Adapter
from lvlm_guard.models.internvl import InternVLAdapter
from lvlm_guard.models.llava import LlavaAdapter
from lvlm_guard.models.llava_next import LlavaNextAdapter
from lvlm_guard.models.llava_onevision import LlavaOnevisionAdapter
from lvlm_guard.models.qwen2_vl import Qwen2VLAdapter

ADAPTERS = {
    "llava": LlavaAdapter,
    "llava_next": LlavaNextAdapter,
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2VLAdapter,
    "idefics3": Idefics3Adapter,
    "smolvlm": Idefics3Adapter,
    "llava_onevision": LlavaOnevisionAdapter,
    "gemma3": Gemma3Adapter,
    "internvl": InternVLAdapter,
}


@pytest.fixture(
    scope="module",
    params=[(name, impl) for name in FAMILIES for impl in ("sdpa", "eager")],
    ids=lambda param: "-".join(param),
)
def family(request):
    name, attn_implementation = request.param
    model, processor = FAMILIES[name](attn_implementation=attn_implementation)
    return name, model, processor


def prepare(model, processor, images=IMAGES, prompts=PROMPTS):
    return lg.Guard(model, processor, []).prepare(images, prompts)  # never attached: only builds inputs


@torch.no_grad()
def logits_of(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


@torch.no_grad()
def greedy(model, inputs, steps: int = STEPS):
    return model.generate(
        **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
    )


# --- structure ---------------------------------------------------------------------------------
def test_adapter_and_spec_match_the_model(family):
    name, model, _ = family
    adapter = lg.adapter_for(model)
    assert type(adapter) is ADAPTERS[name]
    assert adapter.spec == lg.ModelSpec(
        num_layers=LAYERS, num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=8, hidden_size=32
    )
    assert adapter.spec.kv_group_size == 2
    assert len(adapter.decoder_layers) == LAYERS
    for layer in range(LAYERS):
        attention = adapter.attention(layer)
        assert attention.layer_idx == layer
        assert attention.head_dim == adapter.spec.head_dim
        assert attention.q_proj.out_features == HEADS * adapter.spec.head_dim
        assert attention.k_proj.out_features == KV_HEADS * adapter.spec.head_dim
        assert adapter.o_proj(layer) is attention.o_proj
        assert adapter.o_proj(layer).in_features == HEADS * adapter.spec.head_dim
    # the decoder the adapter names is the one that feeds lm_head: its layers are the model's
    assert model.get_decoder().layers is adapter.decoder_layers
    assert adapter.text_config is model.config.get_text_config()
    assert adapter.image_token_id == model.config.image_token_id
    assert type(model).__name__ in lg.supported_architectures()


def test_bitsandbytes_skips_exactly_what_is_outside_the_decoder(family):
    """Every Linear outside the decoder layers (vision tower, projector or merger, lm_head) stays
    in full precision; every Linear of the decoder is quantized (transformers' own matcher)."""
    _, model, _ = family
    adapter = lg.adapter_for(model)
    decoder = {id(m) for m in adapter.decoder_layers.modules()}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert any(id(m) not in decoder for _, m in linears)
    for module_name, module in linears:
        quantized = should_convert_module(module_name, list(adapter.unquantized_modules))
        assert quantized == (id(module) in decoder), module_name


QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
CHAT_PROMPTS = {  # "what is <image> this ?" with two images: one placed by the user, one unplaced
    "llava": "USER: <image>\nwhat is <image>\n this ? ASSISTANT:",
    "llava_next": "[INST] <image>\n<image>\nwhat is  this ? [/INST]",
    "qwen2_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    f"{QWEN_IMAGE}what is {QWEN_IMAGE} this ?<|im_end|>\n<|im_start|>assistant\n",
    "idefics3": "<|begin_of_text|>User:<image>what is <image> this ?<end_of_utterance>\nAssistant:",
    "smolvlm": "<|im_start|>User:<image>what is <image> this ?<end_of_utterance>\nAssistant:",
}
CHAT_PROMPTS["qwen2_5_vl"] = CHAT_PROMPTS["qwen2_vl"]
CHAT_PROMPTS["llava_onevision"] = (
    "<|im_start|>user\n<image>\nwhat is <image>\n this ?<|im_end|>\n<|im_start|>assistant\n"
)
CHAT_PROMPTS["gemma3"] = (
    "<bos><start_of_turn>user\n<start_of_image>what is <start_of_image> this ?<end_of_turn>\n<start_of_turn>model\n"
)
CHAT_PROMPTS["internvl"] = (
    "<|im_start|>user\n<IMG_CONTEXT>\nwhat is <IMG_CONTEXT>\n this ?<|im_end|>\n<|im_start|>assistant\n"
)


def test_chat_prompt_renders_the_family_template(family):
    name, model, processor = family
    rendered = lg.adapter_for(model).chat_prompt(processor, "what is <image> this ?", 2)
    assert rendered == CHAT_PROMPTS[name]
    assert rendered.count(processor.image_token) == 2


# --- image positions: hand-built sequences with known positions ----------------------------------
def _tokens(processor, *names: str) -> list[int]:
    return processor.tokenizer.convert_tokens_to_ids(list(names))


def image_layout(name: str, processor, size) -> list[tuple[int, bool]]:
    """One image as its family's processor lays it out: (token id, is an image token) pairs.

    `size`: the image-token count, or for Idefics3 the (rows, cols) of its sub-image grid.
    """
    if name == "llava":
        (img,) = _tokens(processor, "<image>")
        return [(img, True)] * size
    if name in ("llava_next", "llava_onevision"):
        img, newline = _tokens(processor, "<image>", "\n")
        return [(img, True)] * size + [(newline, False)]
    if name in ("qwen2_vl", "qwen2_5_vl"):
        start, pad, end = _tokens(processor, "<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
        return [(start, False)] + [(pad, True)] * size + [(end, False)]
    if name == "gemma3":
        boi, soft, eoi = _tokens(processor, "<start_of_image>", "<image_soft_token>", "<end_of_image>")
        return [(boi, False)] + [(soft, True)] * size + [(eoi, False)]
    if name == "internvl":
        start, context, end = _tokens(processor, "<img>", "<IMG_CONTEXT>", "</img>")
        return [(start, False)] + [(context, True)] * size + [(end, False)]
    fake, img, glob, newline = _tokens(processor, "<fake_token_around_image>", "<image>", "<global-img>", "\n")
    rows, cols = size
    out: list[tuple[int, bool]] = []
    for r in range(rows):
        for c in range(cols):
            (tag,) = _tokens(processor, f"<row_{r + 1}_col_{c + 1}>")
            out += [(fake, False), (tag, False)] + [(img, True)] * 4
        out.append((newline, False))
    if rows:
        out.append((newline, False))
    return out + [(fake, False), (glob, False)] + [(img, True)] * 4 + [(fake, False)]


# per family: the images of two prompts; prompt 1 has two adjacent images, then text, then one more
HAND_BUILT_SIZES = {
    "llava": ([16], [16, 16, 16]),
    "llava_next": ([20], [7, 33, 12]),
    "qwen2_vl": ([4], [6, 9, 12]),
    "qwen2_5_vl": ([4], [6, 9, 12]),
    "idefics3": ([(0, 0)], [(2, 2), (1, 2), (2, 1)]),
    "smolvlm": ([(0, 0)], [(2, 2), (1, 2), (2, 1)]),
    "llava_onevision": ([20], [7, 33, 12]),
    "gemma3": ([4], [4, 4, 4]),
    "internvl": ([4], [8, 12, 20]),
}


def hand_built_batch(name: str, processor):
    """Two left-padded rows; returns input_ids, the expected mask and the expected spans."""
    text = _tokens(processor, "describe", "the", "dog")
    first, second = HAND_BUILT_SIZES[name]
    rows = []  # (token id, is an image token, index of its image or None)
    for sizes, gaps in ((first, [text, text[:1]]), (second, [text[:2], [], text, text])):
        row = [(t, False, None) for t in gaps[0]]
        for i, size in enumerate(sizes):
            row += [(tok, flag, i) for tok, flag in image_layout(name, processor, size)]
            row += [(t, False, None) for t in gaps[i + 1]]
        rows.append(row)
    width = max(len(r) for r in rows) + 1
    pad = processor.tokenizer.pad_token_id
    ids, mask, spans = [], [], []
    for row in rows:
        row = [(pad, False, None)] * (width - len(row)) + row
        ids.append([t for t, _, _ in row])
        mask.append([flag for _, flag, _ in row])
        per_image: dict[int, list[int]] = {}
        for pos, (_, flag, index) in enumerate(row):
            if flag:
                per_image.setdefault(index, []).append(pos)
        spans.append([(pos[0], pos[-1] + 1) for _, pos in sorted(per_image.items())])
    return torch.tensor(ids), torch.tensor(mask), spans


def test_image_mask_and_spans_on_hand_built_ids(family):
    name, model, processor = family
    adapter = lg.adapter_for(model)
    ids, mask, spans = hand_built_batch(name, processor)
    assert torch.equal(adapter.image_token_mask(ids), mask)
    assert adapter.image_spans(ids) == spans
    assert [len(s) for s in spans] == [1, 3]


def test_image_spans_from_the_processor_are_padding_aware(family):
    """A left-padded batch with one, two and no images: each row's spans are that prompt's own
    spans shifted by its padding, and each span holds the image's own token count."""
    name, model, processor = family
    adapter = lg.adapter_for(model)
    images = [*IMAGES, None]
    prompts = [*PROMPTS, "is there a dog on the table ?"]
    batch = prepare(model, processor, images, prompts)
    ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    mask, spans = adapter.image_token_mask(ids), adapter.image_spans(ids)
    assert not mask[attention_mask == 0].any()
    per_prompt = [imgs if isinstance(imgs, list) else [imgs] if imgs is not None else [] for imgs in images]
    for row, (imgs, prompt) in enumerate(zip(per_prompt, prompts)):
        alone = prepare(model, processor, [imgs or None], [prompt])["input_ids"]
        padding = int((attention_mask[row] == 0).sum())
        assert torch.equal(ids[row, padding:], alone[0])
        assert spans[row] == [(s + padding, e + padding) for s, e in adapter.image_spans(alone)[0]]
        assert len(spans[row]) == len(imgs)
        for (start, end), img in zip(spans[row], imgs):
            own = prepare(model, processor, [img], ["a"])["input_ids"]
            count = int((own == adapter.image_token_id).sum())
            assert int(mask[row, start:end].sum()) == count
            assert mask[row, start] and mask[row, end - 1]
            if name not in ("idefics3", "smolvlm"):
                assert end - start == count and mask[row, start:end].all()
        if spans[row]:
            outside = torch.ones_like(mask[row])
            for start, end in spans[row]:
                outside[start:end] = False
            assert not mask[row][outside].any()
    if name in ("idefics3", "smolvlm"):  # gaps inside a span are only the layout's own tokens
        layout = set(_tokens(processor, "<fake_token_around_image>", "<global-img>", "\n"))
        layout |= {
            t for t in range(len(processor.tokenizer)) if "_col_" in processor.tokenizer.convert_ids_to_tokens(t)
        }
        for row, row_spans in enumerate(spans):
            for start, end in row_spans:
                gaps = ids[row, start:end][~mask[row, start:end]]
                assert set(gaps.tolist()) <= layout


# --- guard lifecycle ---------------------------------------------------------------------------
def test_empty_guard_and_detach_are_bit_identical(family):
    _, model, processor = family
    inputs = prepare(model, processor)
    plain_logits, plain = logits_of(model, inputs), greedy(model, inputs)
    guard = lg.attach(model, processor, [])
    try:
        assert torch.equal(logits_of(model, inputs), plain_logits)
        attached = greedy(model, inputs)
        assert torch.equal(attached.sequences, plain.sequences)
        assert all(torch.equal(a, b) for a, b in zip(attached.logits, plain.logits))
        out = guard.generate(IMAGES, PROMPTS, max_new_tokens=STEPS)
        new = plain.sequences[:, inputs["input_ids"].shape[1] :]
        special = {processor.tokenizer.pad_token_id, processor.tokenizer.eos_token_id}
        assert out.token_ids == [[t for t in row if t not in special] for row in new.tolist()]
    finally:
        guard.detach()
    assert torch.equal(logits_of(model, inputs), plain_logits)
    assert torch.equal(greedy(model, inputs).sequences, plain.sequences)


def test_pai_edits_only_the_last_row_from_layer_2(family):
    """Layers 0-1 are untouched; from layer 2 on only the last query row moves.

    Left-padding rows are left out: under eager attention a fully masked query row spreads its
    weight over every key, the edited last one included (garbage either way, never read).
    """
    _, model, processor = family
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.5, gamma=None)])
    try:
        inputs = guard.prepare(IMAGES, PROMPTS)
        with guard.tap(attention_layers=range(LAYERS)) as on, torch.no_grad():
            on_logits = model(**inputs).logits
        with guard.disabled(), guard.tap(attention_layers=range(LAYERS)) as off, torch.no_grad():
            off_logits = model(**inputs).logits
        image_keys = guard.adapter.image_token_mask(inputs["input_ids"])
    finally:
        guard.detach()
    earlier = inputs["attention_mask"].bool()  # [b, q]: real tokens before the last one
    earlier[:, -1] = False
    assert torch.equal(off_logits, logits_of(model, inputs))
    assert not torch.allclose(on_logits[:, -1], off_logits[:, -1])
    assert torch.equal(on_logits[earlier], off_logits[earlier])
    for layer in range(LAYERS):
        a, b = on.attention[layer][0], off.attention[layer][0]  # [b, heads, q, k]
        assert a.shape == (2, HEADS, inputs["input_ids"].shape[1], inputs["input_ids"].shape[1])
        if layer < 2:
            assert torch.equal(a, b)
            continue
        assert torch.equal(a.transpose(1, 2)[earlier], b.transpose(1, 2)[earlier])
        assert (a[:, :, -1] - b[:, :, -1]).abs().amax(-1).gt(0).all()
        if layer == 2:  # same inputs as without the edit: the image share must rise in every head
            gained = ((a[:, :, -1] - b[:, :, -1]) * image_keys[:, None]).sum(-1)
            assert (gained > 0).all()


def test_pai_image_free_branch_generates(family):
    _, model, processor = family
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.5, gamma=1.1)])
    try:
        no_image = guard.adapter.text_only_inputs(processor, PROMPTS, guard.device)
        assert not guard.adapter.image_token_mask(no_image["input_ids"]).any()
        assert no_image["attention_mask"][:, -1].all()  # left-padded: the last column is real
        out = guard.generate(IMAGES, PROMPTS, max_new_tokens=3)
        with guard.disabled():
            off = guard.generate(IMAGES, PROMPTS, max_new_tokens=3)
    finally:
        guard.detach()
    assert len(out.token_ids) == 2 and all(len(t) > 0 for t in out.token_ids)
    assert len(off.token_ids) == 2


def test_the_fused_kernel_equals_the_bias_path(family, monkeypatch):
    """PAI through the Triton kernel (CPU: its interpreter) against the SDPA-bias path, every family:
    GQA, multi-image prompts, left padding, the family's own masks and scaling."""
    pytest.importorskip("triton")
    _, model, processor = family
    calls = []
    kernel_call = attention.dk.decode_attention
    monkeypatch.setattr(attention.dk, "decode_attention", lambda *a, **kw: calls.append(1) or kernel_call(*a, **kw))
    runs = {}
    for setting in ("off", "on"):
        guard = lg.attach(model, processor, [lg.PAI(alpha=0.5, gamma=None)], paths=lg.FastPaths(decode_kernel=setting))
        try:
            runs[setting] = greedy(model, guard.prepare(IMAGES, PROMPTS))
            assert setting == "on" or not calls
        finally:
            guard.detach()
    base, fused = runs["off"], runs["on"]
    assert len(calls) == STEPS * len(lg.PAI().layers(guard.adapter.spec))  # prefill + every step, every layer
    assert torch.equal(fused.sequences, base.sequences)
    for a, b in zip(fused.logits, base.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
