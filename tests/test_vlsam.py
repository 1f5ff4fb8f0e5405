"""VL-SAM: flow vs float64 reference, point sampling, tiny-SAM wiring, maps on a tiny LLaVA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_llava

import lvlm_guard as lg
from lvlm_guard.errors import InputMismatchError, InterventionConfigError
from lvlm_guard.vlsam import FlowConfig, FlowTaps, PromptConfig, SamRunner, attention_flow, box_from_map, sample_points
from lvlm_guard.vlsam.attention_maps import map_to_image


def causal_probs(layers: int, heads: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    out = []
    for _ in range(layers):
        logits = torch.randn(heads, n, n, generator=g, dtype=torch.float64) * 2
        out.append(logits.masked_fill(~mask, float("-inf")).softmax(-1))
    return out


def reference_flow(layers, allowed, regularize=True, residual=0.0):
    """Loop-by-loop float64 rendering of the pinned formula."""
    n = allowed.shape[0]
    running = torch.eye(n, dtype=torch.float64)
    for s in layers:
        heads = s.shape[0]
        a = torch.zeros(n, n, dtype=torch.float64)
        for h in range(heads):
            w = sum(max(s[h, i, j].item() for j in range(n)) for i in range(n)) / n
            a += w * s[h] / heads
        if regularize:
            for j in range(n):
                seen = sum(bool(allowed[i, j]) for i in range(n))
                a[:, j] *= 1 - seen / n
        for i in range(n):
            total = a[i].sum()
            if total > 0:
                a[i] /= total
        a = (1 - residual) * a + residual * torch.eye(n, dtype=torch.float64)
        running = a @ running
    return running


@pytest.mark.parametrize("regularize,residual", [(True, 0.0), (False, 0.0), (True, 0.5)])
def test_flow_matches_float64_reference(regularize, residual):
    layers = causal_probs(3, 4, 7)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()
    cfg = FlowConfig(regularize=regularize, residual=residual)
    got = attention_flow([p.float() for p in layers], allowed, cfg).double()
    want = reference_flow(layers, allowed, regularize, residual)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the regularization moves mass away from the first key (the causal sink)
    if regularize:
        assert got[-1, 0] < reference_flow(layers, allowed, False)[-1, 0]


def test_flow_taps_equal_full_flow_and_keep_one_matrix():
    layers = causal_probs(4, 2, 6, seed=3)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    taps = FlowTaps(attention_layers=frozenset(range(4)), prefill_only=True)
    taps.key_allowed = allowed[None]
    for i, p in enumerate(layers):
        taps.record_attention(i, p[None].float())
    torch.testing.assert_close(taps.running[0], attention_flow(layers, allowed), rtol=1e-5, atol=1e-6)
    assert taps.attention == {} and taps.running.shape == (1, 6, 6) and taps.layers_seen == [0, 1, 2, 3]


def test_bad_configs_and_shapes():
    with pytest.raises(InterventionConfigError):
        FlowConfig(head_weighting="entropy")
    with pytest.raises(InterventionConfigError):
        PromptConfig(rounds=0)
    with pytest.raises(InputMismatchError):
        map_to_image(torch.ones(15), (4, 4), (8, 8))
    with pytest.raises(InputMismatchError):
        attention_flow(causal_probs(1, 2, 5), torch.ones(4, 4, dtype=torch.bool))


def blob(h=40, w=50, cx=35, cy=10) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 30.0)


def test_points_peak_and_negatives_low():
    m = blob()
    pos, neg = sample_points(m, PromptConfig(positives=1, negatives=3, low=0.2))
    assert pos == [(35, 10)]
    assert len(neg) == 3
    for x, y in neg:
        assert m[y, x] <= 0.2 * m.max()
    # refinement: positives restricted to a region
    region = torch.zeros_like(m, dtype=torch.bool)
    region[30:, :10] = True
    pos2, neg2 = sample_points(m, PromptConfig(negatives=2), region)
    assert all(region[y, x] for x, y in pos2) and not any(region[y, x] for x, y in neg2)
    x0, y0, x1, y1 = box_from_map(m, 0.5)
    assert x0 <= 35 < x1 and y0 <= 10 < y1 and x1 - x0 < 20


def tiny_sam():
    from transformers import (
        SamConfig,
        SamImageProcessorPil,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        mlp_dim=64,
        global_attn_indexes=[1],
        window_size=4,
        num_pos_feats=8,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16
    )
    torch.manual_seed(0)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).eval()
    images = SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    return model, SamProcessor(image_processor=images)


def test_sam_wiring_gives_mask_box_score_at_image_size():
    model, processor = tiny_sam()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    seg = SamRunner(model, processor).segment(img, blob(), PromptConfig(rounds=2))
    assert seg.mask.shape == (40, 50) and seg.mask.dtype == torch.bool
    assert isinstance(seg.score, float)
    assert seg.box is None or (0 <= seg.box[0] < seg.box[2] <= 50 and 0 <= seg.box[1] < seg.box[3] <= 40)
    assert seg.positives and all(0 <= x < 50 and 0 <= y < 40 for x, y in seg.positives)
    with pytest.raises(InputMismatchError):
        SamRunner(model, processor).segment(img, blob(10, 10))


def test_locate_on_tiny_llava_gives_map_of_image_size():
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [])
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (36, 44, 3), dtype=np.uint8))
    found = guard.locate(img, "dog")
    assert found.heatmap.shape == (36, 44)
    assert float(found.heatmap.min()) == 0.0 and float(found.heatmap.max()) == 1.0
    x, y = found.point
    assert found.heatmap[y, x] == 1.0
    maps = guard.attention_maps(img, "a dog and a cat", ["dog", "cat"])
    assert set(maps) == {"dog", "cat"} and not torch.equal(maps["dog"], maps["cat"])
    assert guard.state.taps is None  # nothing left recording
    model2, processor2 = tiny_sam()
    seg = guard.segment(img, "dog", sam=SamRunner(model2, processor2))
    assert seg[0].segmentation.mask.shape == (36, 44)
    with pytest.raises(InputMismatchError):
        guard.attention_maps(img, "a cat", ["dog"])
    guard.detach()


def test_layer_sum_ablation_adds_instead_of_multiplying():
    layers = causal_probs(2, 2, 5, seed=5)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    cfg = FlowConfig(propagate=False, regularize=False, renormalize=False)
    got = attention_flow(layers, allowed, cfg)
    want = sum((p * p.amax(-1).mean(-1)[:, None, None]).mean(0) for p in layers)
    torch.testing.assert_close(got, want)
