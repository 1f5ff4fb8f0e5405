"""Bad input gets a typed error that names the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_llava

import lvlm_guard as lg
from lvlm_guard.inputs import load_image


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def rgb(size=(20, 20)):
    return Image.new("RGB", size, (10, 200, 30))


def test_image_prompt_count_mismatch(llava):
    guard = lg.Guard(*llava, [])
    with pytest.raises(lg.InputMismatchError, match="2 image entries for 1 prompts"):
        guard.prepare([rgb(), rgb()], ["one prompt"])
    with pytest.raises(lg.InputMismatchError, match="single string"):
        guard.prepare([rgb()], "not a list")


def test_unreadable_missing_and_zero_size_images(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(lg.ImageInputError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(lg.ImageInputError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(lg.ImageInputError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(lg.ImageInputError, match="shape"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(lg.ImageInputError, match="int"):
        load_image(3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1"])
def test_non_rgb_modes_are_converted(mode):
    img = Image.new(mode, (8, 6))
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (8, 6)


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)


def test_too_many_image_placeholders(llava):
    guard = lg.Guard(*llava, [])
    with pytest.raises(lg.InputMismatchError, match="2 image placeholders"):
        guard.prepare([rgb()], ["compare <image> with <image>"])


def test_guard_attached_twice(llava):
    guard = lg.attach(*llava, [])
    try:
        with pytest.raises(lg.GuardStateError, match="already attached"):
            lg.attach(*llava, [])
        with pytest.raises(lg.GuardStateError, match="already attached"):
            guard.attach()
    finally:
        guard.detach()
    with pytest.raises(lg.GuardStateError, match="not attached"):
        guard.detach()
    with pytest.raises(lg.GuardStateError, match="detached"):
        guard.generate([rgb()], ["hi"])


def test_interventions_naming_missing_layers_or_heads(llava):
    model, processor = llava  # 4 layers, 4 heads
    with pytest.raises(lg.InterventionConfigError, match=r"layers \[4, 5\] do not exist"):
        lg.attach(model, processor, [lg.PAI(start_layer=2, end_layer=6)])
    with pytest.raises(lg.InterventionConfigError, match="empty layer range"):
        lg.attach(model, processor, [lg.PAI(start_layer=3, end_layer=3)])
    from lvlm_guard.methods.base import check_heads

    with pytest.raises(lg.InterventionConfigError, match=r"heads \[7\] do not exist"):
        check_heads("x", [1, 7], lg.adapter_for(model).spec)
    with pytest.raises(lg.InterventionConfigError, match="alpha"):
        lg.PAI(alpha=-1)
    guard = lg.attach(model, processor, [])
    try:
        with pytest.raises(lg.InterventionConfigError, match="layer 9"), guard.tap(attention_layers=[9]):
            pass
    finally:
        guard.detach()
    assert not hasattr(model, "_lvlm_guard")  # a failed attach leaves nothing behind


def test_guard_spec_parsing():
    (pai,) = lg.parse_guard_spec("pai:alpha=0.5:gamma=none")
    assert pai == lg.PAI(alpha=0.5, gamma=None)
    assert lg.parse_guard_spec("none") == []
    with pytest.raises(lg.UnknownGuardError, match="unknown guard 'nope'"):
        lg.parse_guard_spec("pai,nope")
    with pytest.raises(lg.InterventionConfigError, match="bad setting 'beta=1'"):
        lg.parse_guard_spec("pai:beta=1")


def test_load_missing_local_dir_and_offline_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(lg.ModelNotFoundError, match="no config.json"):
        lg.load(empty)
    with pytest.raises(lg.ModelNotFoundError, match="llava-hf/not-here"):
        lg.load("llava-hf/not-here", local_files_only=True)


def test_load_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(lg.UnsupportedModelError, match="LlamaForCausalLM.*supported: .*LlavaForConditionalGeneration"):
        lg.load(tmp_path)


def test_quantization_without_bitsandbytes_or_gpu(tmp_path, llava):
    model, processor = llava
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(lg.QuantizationUnavailableError, match="4bit"):
        lg.load(tmp_path, quantization="4bit")
    with pytest.raises(ValueError, match="quantization must be"):
        lg.load(tmp_path, quantization="3bit")


def test_load_roundtrip_from_a_local_directory(tmp_path, llava):
    model, processor = llava
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = lg.load(tmp_path, dtype="float32")
    guard = lg.Guard(model, processor, [])
    inputs = guard.prepare([rgb()], ["what is this ?"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    assert lg.adapter_for(loaded).spec == lg.adapter_for(model).spec
