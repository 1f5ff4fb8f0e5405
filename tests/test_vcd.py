"""VCD (Leng et al., CVPR 2024; DAMO-NLP-SG/VCD): the noise against float64 `vcd_add_noise.py`, the
contrast and cut against float64 `vcd_sample.py`, the batched branch against two separate forwards,
and the guard end to end (alpha 0 = plain greedy, batch = one by one, detach bit-identical)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_families import FAMILIES

import lvlm_guard as lg
from lvlm_guard.errors import InterventionConfigError, InvalidSettingError
from lvlm_guard.methods.vcd import VCD, add_diffusion_noise, contrast_logits
from lvlm_guard.methods.vcd.branch import NoisedBranch
from lvlm_guard.methods.vcd.noise import picture_noise, q_sample

STEPS = 4


def image(seed: int, size=(40, 36)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


IMAGES = [image(1), image(2, (24, 56))]
PROMPTS = ["what is this ?", "describe this picture in detail please"]


def official_q_x(x0: np.ndarray, eps: np.ndarray, t: int) -> np.ndarray:
    """vcd_add_noise.py:4-22 in float64."""
    betas = np.linspace(-6, 6, 1000)
    betas = 1 / (1 + np.exp(-betas)) * (0.5e-2 - 1e-5) + 1e-5
    alphas_prod = np.cumprod(1 - betas)
    return np.sqrt(alphas_prod[t]) * x0 + np.sqrt(1 - alphas_prod[t]) * eps


def official_contrast(logits: np.ndarray, noised: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """vcd_sample.py:146-153 in float64, the cut as probabilities (version 1, :146-147)."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = (1 + alpha) * logits - alpha * noised
    return np.where(probs < beta * probs.max(-1, keepdims=True), -np.inf, out)


@pytest.mark.parametrize("t", [0, 250, 500, 999])
def test_noise_is_the_official_forward_diffusion(t):
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    expected = official_q_x(x0.double().numpy(), eps.double().numpy(), t)
    np.testing.assert_allclose(q_sample(x0, eps, t).double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_noise_is_seeded_per_picture():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 8, 8, generator=gen), torch.randn(3, 8, 8, generator=gen)
    batch = add_diffusion_noise(torch.stack([a, b]), 500, seed=42)
    assert torch.equal(batch, add_diffusion_noise(torch.stack([a, b]), 500, seed=42))  # rerun
    assert torch.equal(batch[1], add_diffusion_noise(b[None], 500, seed=42)[0])  # batch position
    assert torch.equal(batch[0], add_diffusion_noise(torch.stack([b, a]), 500, seed=42)[1])
    assert not torch.equal(batch, add_diffusion_noise(torch.stack([a, b]), 500, seed=43))
    eps = picture_noise(a, 42)
    torch.testing.assert_close(batch[0], q_sample(a, eps, 500))
    assert abs(float(eps.mean())) < 0.2 and abs(float(eps.std()) - 1) < 0.2
    padded = add_diffusion_noise(torch.stack([a, torch.zeros_like(a)])[None], 500, seed=42)  # [b, n, C, H, W]
    assert torch.equal(padded[0, 1], torch.zeros_like(a))  # padding images stay padding


def test_contrast_and_cut_match_float64():
    gen = torch.Generator().manual_seed(2)
    logits, noised = torch.randn(3, 5, 50, generator=gen) * 3, torch.randn(3, 5, 50, generator=gen) * 3
    for alpha, beta in ((1.0, 0.1), (0.5, 0.2), (0.0, 0.1), (2.0, 1.0)):
        got = contrast_logits(logits, noised, alpha, beta).double().numpy()
        expected = official_contrast(logits.double().numpy(), noised.double().numpy(), alpha, beta)
        assert np.array_equal(np.isinf(got), np.isinf(expected))
        np.testing.assert_allclose(got[~np.isinf(got)], expected[~np.isinf(expected)], rtol=1e-5, atol=1e-5)
    assert math.isclose(math.log(0.1), float(np.log(0.1)))


def test_settings_are_checked():
    assert VCD() == VCD(alpha=1.0, beta=0.1, noise_step=500, seed=42)
    for bad in (dict(beta=0.0), dict(beta=1.5), dict(alpha=-1.0), dict(noise_step=1000), dict(seed=-1)):
        with pytest.raises(InvalidSettingError):
            VCD(**bad)
    assert lg.parse_guard_spec("vcd:alpha=0.5:noise_step=999") == [VCD(alpha=0.5, noise_step=999)]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl", "idefics3"])
def family(request):
    return FAMILIES[request.param]()


@pytest.mark.parametrize("pre_encoded", [True, False], ids=["features", "pixels"])
@torch.no_grad()
def test_one_forward_equals_the_contrast_of_two_separate_forwards(family, pre_encoded, monkeypatch):
    """The doubled batch (clean rows, then noised rows) gives what two separate forwards give, with
    the images entering as pre-encoded features (transformers 5.25) or as doubled pixels (5.17)."""
    model, processor = family
    install = NoisedBranch.install

    def install_as(self):
        install(self)
        self.pre_encoded = pre_encoded

    monkeypatch.setattr(NoisedBranch, "install", install_as)
    guard = lg.attach(model, processor, [VCD(alpha=1.0)])
    try:
        inputs = guard.prepare(IMAGES, PROMPTS)
        guarded = model(**inputs).logits
        with guard.disabled():
            clean = model(**inputs).logits
            noised = model(**{**inputs, "pixel_values": add_diffusion_noise(inputs["pixel_values"], 500, 42)}).logits
    finally:
        guard.detach()
    expected = contrast_logits(clean, noised, 1.0, 0.1)
    real = inputs["attention_mask"].bool()
    assert guarded.shape == clean.shape
    assert torch.equal(torch.isinf(guarded[real]), torch.isinf(expected[real]))
    finite = ~torch.isinf(expected[real])
    torch.testing.assert_close(guarded[real][finite], expected[real][finite], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_alpha_0_is_plain_greedy_and_detach_is_bit_identical(family):
    model, processor = family
    probe = lg.Guard(model, processor, [])
    inputs = probe.prepare(IMAGES, PROMPTS)
    before = model(**inputs).logits
    plain = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)  # fmt: skip
    guard = lg.attach(model, processor, [VCD(alpha=0.0)])
    try:
        zero = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)  # fmt: skip
    finally:
        guard.detach()
    assert torch.equal(zero.sequences, plain.sequences)
    for a, b in zip(zero.logits, plain.logits):  # the kept tokens' logits are the plain ones
        kept = ~torch.isinf(a)
        torch.testing.assert_close(a[kept], b[kept], rtol=1e-4, atol=1e-4)
    assert "get_image_features" not in vars(model.base_model)
    assert torch.equal(model(**inputs).logits, before)
    assert torch.equal(model.generate(**inputs, max_new_tokens=STEPS, do_sample=False), plain.sequences)


def test_guarded_generation_runs_batches_and_composes(family):
    model, processor = family
    guard = lg.attach(model, processor, [lg.PAI(alpha=0.5, gamma=None), VCD()])
    try:
        batch = guard.generate(IMAGES, PROMPTS, max_new_tokens=STEPS)
        single = [guard.generate([img], [p], max_new_tokens=STEPS) for img, p in zip(IMAGES, PROMPTS)]
        with guard.disabled():
            off = guard.generate(IMAGES, PROMPTS, max_new_tokens=STEPS)
        text_only = guard.generate([None], ["what is this ?"], max_new_tokens=2)
    finally:
        guard.detach()
    assert batch.token_ids == [s.token_ids[0] for s in single]
    assert len(off.token_ids) == 2 and len(text_only.token_ids) == 1


def test_static_cache_is_refused_by_name(family):
    model, processor = family
    guard = lg.attach(model, processor, [VCD()])
    try:
        with pytest.raises(InterventionConfigError, match="vcd: a static cache"):
            guard.generate(IMAGES[:1], PROMPTS[:1], max_new_tokens=2, cache_implementation="static")
        out = guard.generate(IMAGES[:1], PROMPTS[:1], max_new_tokens=2)  # the guard still works after
    finally:
        guard.detach()
    assert len(out.token_ids) == 1
