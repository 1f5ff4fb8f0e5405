"""Bad input gets a typed error that names the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_llava

import lvlm_guard as lg
from lvlm_guard.engine.inputs import load_image


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
    with pytest.raises(lg.InterventionConfigError, match=r"layers 4, 5 do not exist"):
        lg.attach(model, processor, [lg.PAI(start_layer=2, end_layer=6)])
    with pytest.raises(lg.InterventionConfigError, match="empty layer range"):
        lg.attach(model, processor, [lg.PAI(start_layer=3, end_layer=3)])
    from lvlm_guard.methods.base import check_heads

    with pytest.raises(lg.InterventionConfigError, match=r"head 7 does not exist"):
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


@pytest.mark.parametrize(
    ("spec", "field", "allowed"),
    [
        ("pai:alpha=abc", "alpha", "a number or none"),
        ("pai:alpha=nan", "alpha", "a finite number"),
        ("pai:alpha=-1", "alpha", ">= 0"),
        ("pai:plausibility=0", "plausibility", "in (0, 1]"),
        ("pai:start_layer=1.5", "start_layer", "an integer"),
        ("var:tau=-1", "tau", "> 0"),
        ("var:tau=0", "tau", "> 0"),
        ("var:p=0", "p", "in (0, 1]"),
        ("var:sink_dims=3;x", "sink_dims", "a list of integers"),
        ("var:last_layer=maybe", "last_layer", "true or false"),
        ("vhr:alpha=0", "alpha", "> 0"),
        ("vhr:prompt_rows=some", "prompt_rows", "one of 'all', 'last'"),
        ("vhr:explicit_layers=-1;2", "explicit_layers", ">= 0 (every entry)"),
        ("exit:threshold=7", "threshold", "in [0, 1]"),
        ("exit:layer=abc", "layer", "an integer or none"),
    ],
)
def test_bad_setting_values_raise_one_typed_error_naming_field_value_and_range(spec, field, allowed):
    with pytest.raises(lg.InvalidSettingError) as info:
        lg.parse_guard_spec(spec)
    error = info.value
    assert error.method == spec.split(":")[0] and error.field == field and allowed in error.allowed
    assert f"{field}=" in str(error) and isinstance(error, lg.InterventionConfigError)


def test_the_api_checks_settings_like_the_spec_parser():
    with pytest.raises(lg.InvalidSettingError, match="alpha='x'"):
        lg.PAI(alpha="x")
    with pytest.raises(lg.InvalidSettingError, match="true or false"):
        lg.VAR(last_layer=1)
    assert lg.VHR(explicit_layers=[1, 2]).explicit_layers == (1, 2)  # a list becomes the tuple
    assert lg.parse_guard_spec("var:sink_dims=3;5:last_layer=true") == [lg.VAR(sink_dims=(3, 5), last_layer=True)]
    with pytest.raises(lg.InterventionConfigError, match=r"a list of guards.*lg.parse_guard_spec\('pai'\)"):
        lg.attach(*tiny_llava(), "pai")


def test_many_missing_layers_are_summarised_not_listed(llava):
    model, processor = llava  # 4 layers
    with pytest.raises(lg.InterventionConfigError) as info:
        lg.attach(model, processor, [lg.PAI(start_layer=2, end_layer=999)])
    assert "layers 4..998 (995 of them) do not exist" in str(info.value) and len(str(info.value)) < 120


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


@pytest.mark.parametrize(
    ("call", "error", "needle"),
    [
        (lambda g: g.generate([np.full((8, 8, 3), 300.0)], ["hi"], max_new_tokens=2), lg.ImageInputError, "expected [0, 1] or [0, 255]"),
        (lambda g: g.generate([np.full((8, 8, 3), np.nan)], ["hi"], max_new_tokens=2), lg.ImageInputError, "NaN"),
        (lambda g: g.generate([np.zeros((8, 8, 5), np.uint8)], ["hi"], max_new_tokens=2), lg.ImageInputError, "C 1, 3 or 4"),
        (lambda g: g.generate([], [], max_new_tokens=2), lg.InputMismatchError, "non-empty list"),
        (lambda g: g.generate([None], [3], max_new_tokens=2), lg.InputMismatchError, "prompt 0 is a int"),
        (lambda g: g.generate([None], ["hi"], max_new_tokens=0), lg.InputMismatchError, "max_new_tokens must be a positive"),
        (lambda g: lg.load("tiny-coco", dtype="float8"), lg.GuardError, "unknown dtype 'float8'"),
    ],
)  # fmt: skip
def test_bad_generate_inputs_raise_typed_errors(llava, call, error, needle):
    guard = lg.attach(*llava, [])
    try:
        with pytest.raises(error) as info:
            call(guard)
        assert needle in str(info.value)
    finally:
        guard.detach()


def test_float_images_in_0_1_equal_their_uint8_version(llava):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 12, 3)).astype(np.uint8)
    assert np.array_equal(np.asarray(load_image(pixels / 255.0)), pixels)
    assert np.array_equal(np.asarray(load_image(pixels.astype(np.float32))), pixels)  # 0-255 floats


def test_an_unreachable_hub_fails_at_once_without_retries(monkeypatch):
    import time

    import lvlm_guard.loading as loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(loading, "_in_hub_cache", lambda repo_id: False)
    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", lambda *a, **k: pytest.fail("the hub was asked"))
    start = time.perf_counter()
    with pytest.raises(lg.ModelNotFoundError, match="'org/unknown'.*cannot be reached"):
        lg.load("org/unknown")
    assert time.perf_counter() - start < 1.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading.hub_reachable() is False  # offline mode: never probed
