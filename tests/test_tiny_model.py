"""The tiny LLaVA's tokenizer, chat format, processor, training tensors and model, built from a tiny world."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from lvlm_guard.embedded.tiny_data import IGNORE, encode_conversations, load_images, pixel_values
from lvlm_guard.embedded.tiny_model import (
    IMAGE,
    TinyLlavaSpec,
    build_config,
    build_image_processor,
    build_model,
    build_processor,
    chat_text,
    checkpoint_dir,
    messages_of,
    train_tokenizer,
)
from lvlm_guard.embedded.world import build_world, iter_conversations

SPEC = TinyLlavaSpec.for_tests()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), sizes={"train": 12}, workers=1, progress=False)


@pytest.fixture(scope="module")
def conversations(world):
    return list(iter_conversations(world, "train"))


@pytest.fixture(scope="module")
def tokenizer(conversations):
    return train_tokenizer([chat_text(c.turns)[0] for c in conversations], vocab_size=512)


def _question(text: str, image=None) -> list[dict]:
    picture = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [picture, {"type": "text", "text": text}]}]


def test_tokenizer_is_deterministic(conversations, tokenizer):
    again = train_tokenizer([chat_text(c.turns)[0] for c in conversations], vocab_size=512)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert (
        tokenizer.convert_tokens_to_ids(IMAGE) == 4 and tokenizer.decode(tokenizer("a dog")["input_ids"][1:]) == "a dog"
    )


def test_chat_template_renders_the_llava_prompt(tokenizer):
    processor = build_processor(tokenizer, SPEC)
    prompt = processor.apply_chat_template(_question("Is there a dog in the image?"), add_generation_prompt=True)
    assert prompt == "USER: <image>\nIs there a dog in the image? ASSISTANT:"


def test_python_rendering_matches_the_template(conversations, tokenizer):
    conv = next(c for c in conversations if len(c.turns) > 1)
    text, spans = chat_text(conv.turns)
    assert tokenizer.apply_chat_template(messages_of(conv.turns), tokenize=False) == text
    assert [text[a:b] for a, b in spans] == [f" {answer}</s>" for _, answer in conv.turns]


def test_processor_expands_the_image_token(world, tokenizer):
    processor = build_processor(tokenizer, SPEC)
    image = Image.open(next(iter(sorted((world / "train").glob("*.jpg")))))
    inputs = processor.apply_chat_template(
        _question("Is there a dog in the image?", image),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.convert_tokens_to_ids(IMAGE)) == SPEC.image_tokens == 16
    assert inputs["pixel_values"].shape == (1, 3, SPEC.image_size, SPEC.image_size)


def test_training_rows_match_the_processor_and_mask_the_prompt(conversations, tokenizer):
    processor = build_processor(tokenizer, SPEC)
    conv = next(c for c in conversations if c.kind == "existence")
    data = encode_conversations([conv], [conv.image_file], tokenizer, SPEC.image_tokens)
    ids, labels = data.input_ids[0, : data.lengths[0]].tolist(), data.labels[0, : data.lengths[0]].tolist()
    text, _ = chat_text(conv.turns)
    expected = processor.tokenizer(text.replace(IMAGE, IMAGE * SPEC.image_tokens))["input_ids"]
    assert ids == expected
    answers = tokenizer.decode([t for t in labels if t != IGNORE])
    assert answers == "".join(f" {a}</s>" for _, a in conv.turns)


def test_pixel_values_equal_the_clip_processor(world):
    files = [p.name for p in sorted((world / "train").glob("*.jpg"))[:2]]
    images = load_images(world / "train", files)
    ours = pixel_values(images)
    theirs = build_image_processor()(images=[Image.open(world / "train" / f) for f in files], return_tensors="pt")
    np.testing.assert_allclose(ours.numpy(), theirs["pixel_values"].numpy(), atol=1e-5)


def test_tiny_model_forward_save_and_reload(world, tokenizer, tmp_path):
    processor = build_processor(tokenizer, SPEC)
    model = build_model(build_config(tokenizer, SPEC), seed=0).eval()
    image = Image.open(next(iter(sorted((world / "train").glob("*.jpg")))))
    prompt = processor.apply_chat_template(_question("Is there a dog in the image?"), add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer)) and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True).eval()
    reloaded = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    again = reloaded(images=image, text=prompt, return_tensors="pt")
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    generated = loaded.generate(**again, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > again["input_ids"].shape[1]


def test_packaged_size_fits_the_budget(tokenizer):
    config = build_config(tokenizer, TinyLlavaSpec())
    config.text_config.vocab_size = 1024  # the trained tokenizer's full size
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    assert params * 2 <= 40e6  # bf16 bytes
    assert config.text_config.num_hidden_layers == 8 and config.text_config.num_attention_heads == 8
    assert TinyLlavaSpec().image_tokens == 196
    assert checkpoint_dir().parts[-2:] == ("checkpoints", "tiny-coco")
