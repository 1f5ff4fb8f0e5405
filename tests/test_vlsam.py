"""VL-SAM: flow vs float64 reference, point sampling, tiny-SAM wiring, maps on a tiny LLaVA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_llava

import lvlm_guard as lg
from lvlm_guard.errors import InputMismatchError, InterventionConfigError
from lvlm_guard.vlsam import (
    FlowConfig,
    FlowTaps,
    PromptConfig,
    SamRunner,
    attention_flow,
    attention_maps_for_flows,
    box_from_map,
    sample_points,
)
from lvlm_guard.vlsam.attention_maps import map_to_image, regularize_columns


def causal_probs(layers: int, heads: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    out = []
    for _ in range(layers):
        logits = torch.randn(heads, n, n, generator=g, dtype=torch.float64) * 2
        out.append(logits.masked_fill(~mask, float("-inf")).softmax(-1))
    return out


def reference_flow(layers, allowed, cfg: FlowConfig, image_tokens=None):
    """Loop-by-loop float64 rendering of paper Eq. 1-3 and our options (no shared code)."""
    n = allowed.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    running = None
    for index, s in enumerate(layers):
        if index < cfg.start_layer or (cfg.end_layer is not None and index >= cfg.end_layer):
            continue
        heads = s.shape[0]
        a = torch.zeros(n, n, dtype=torch.float64)
        for h in range(heads):
            w = 1.0 if cfg.head_weighting == "uniform" else sum(max(s[h, i].tolist()) for i in range(n)) / n
            a += w * s[h] / heads
        for j in range(n):
            if cfg.regularize:
                unmasked = sum(bool(allowed[i, j]) for i in range(n))
                a[:, j] *= 1 - (unmasked - 1) / n
            if cfg.image_only and not image_tokens[j]:
                a[:, j] = 0
        if cfg.renormalize:
            for i in range(n):
                total = a[i].sum()
                if total > 0:
                    a[i] /= total
        if cfg.combine == "rollout":
            a = (1 - cfg.residual) * a + cfg.residual * eye
            running = a if running is None else a @ running
        elif running is None:
            running = a.clone()
        elif cfg.combine == "sum":
            running = running + a
        else:
            running = (eye + a) @ (eye + running)
    return running


FLOWS = [
    FlowConfig(),
    FlowConfig(regularize=False),
    FlowConfig(head_weighting="uniform"),
    FlowConfig(image_only=True),
    FlowConfig(start_layer=1, end_layer=3),
    FlowConfig(combine="rollout", residual=0.5, renormalize=True),
    FlowConfig(combine="rollout", residual=0.0, renormalize=True, regularize=False),
    FlowConfig(combine="rollout", residual=0.5, renormalize=True, image_only=True, start_layer=2),
    FlowConfig(combine="sum", regularize=False),
    FlowConfig(combine="sum", renormalize=True, end_layer=2),
]


@pytest.mark.parametrize("cfg", FLOWS, ids=str)
def test_flow_matches_float64_reference(cfg):
    layers = causal_probs(4, 3, 7)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()
    image = torch.tensor([False, True, True, True, True, False, False])
    got = attention_flow([p.float() for p in layers], allowed, cfg, image).double()
    want = reference_flow(layers, allowed, cfg, image)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_paper_flow_and_regularization_by_hand():
    """Eq. 3 on two layers is I + A1 + A0 + A1 A0; the causal column factors are (j + 1) / N."""
    layers = causal_probs(2, 2, 4, seed=7)
    allowed = torch.ones(4, 4, dtype=torch.bool).tril()
    a = [(p * p.amax(-1).mean(-1)[:, None, None]).mean(0) * torch.tensor([0.25, 0.5, 0.75, 1.0]) for p in layers]
    want = torch.eye(4, dtype=torch.float64) + a[1] + a[0] + a[1] @ a[0]
    torch.testing.assert_close(attention_flow(layers, allowed), want)
    # the first column is damped to 1/N, not zeroed; the last one is kept whole
    ones = torch.ones(4, 4, dtype=torch.float64)
    torch.testing.assert_close(
        regularize_columns(ones, allowed)[0], torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    )


def test_image_only_flow_never_passes_through_text():
    layers = causal_probs(3, 2, 6, seed=2)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    image = torch.tensor([False, True, True, False, False, False])
    cfg = FlowConfig(combine="rollout", residual=0.0, renormalize=True, image_only=True, regularize=False)
    got = attention_flow(layers, allowed, cfg, image)
    # with no residual every row's mass sits on image columns only
    assert torch.all(got[2:, ~image] == 0) and torch.allclose(got[2:].sum(-1), torch.ones(4, dtype=torch.float64))
    with pytest.raises(InputMismatchError):
        attention_flow(layers, allowed, cfg)


def test_flow_taps_equal_full_flow_and_keep_one_matrix_per_flow():
    layers = causal_probs(4, 2, 6, seed=3)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    image = torch.tensor([False, True, True, True, False, False])
    flows = (FlowConfig(), FlowConfig(combine="rollout", renormalize=True, image_only=True, start_layer=1))
    taps = FlowTaps(attention_layers=frozenset(range(4)), prefill_only=True, flows=flows)
    taps.key_allowed = allowed[None]
    taps.image_tokens = image[None]
    for i, p in enumerate(layers):
        taps.record_attention(i, p[None].float())
    for cfg, running in zip(flows, taps.running):
        torch.testing.assert_close(running[0], attention_flow(layers, allowed, cfg, image), rtol=1e-5, atol=1e-6)
        assert running.shape == (1, 6, 6)
    assert taps.attention == {} and len(taps.running) == 2 and taps.layers_seen == [0, 1, 2, 3]


def test_bad_configs_and_shapes():
    with pytest.raises(InterventionConfigError):
        FlowConfig(head_weighting="entropy")
    with pytest.raises(InterventionConfigError):
        FlowConfig(combine="max-flow")
    with pytest.raises(InterventionConfigError):
        FlowConfig(start_layer=4, end_layer=4)
    with pytest.raises(InputMismatchError):
        attention_flow(causal_probs(2, 2, 5), torch.ones(5, 5, dtype=torch.bool).tril(), FlowConfig(start_layer=3))
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
    # several flows from one forward == one forward per flow
    flows = [FlowConfig(), FlowConfig(combine="rollout", renormalize=True, image_only=True, start_layer=1)]
    both = attention_maps_for_flows(guard, img, "a dog and a cat", ["dog"], flows)
    for cfg, maps in zip(flows, both):
        torch.testing.assert_close(maps["dog"], guard.attention_maps(img, "a dog and a cat", ["dog"], flow=cfg)["dog"])
    with pytest.raises(InterventionConfigError):
        guard.locate(img, "dog", flow=FlowConfig(start_layer=99))
    model2, processor2 = tiny_sam()
    seg = guard.segment(img, "dog", sam=SamRunner(model2, processor2))
    assert seg[0].segmentation.mask.shape == (36, 44)
    with pytest.raises(InputMismatchError):
        guard.attention_maps(img, "a cat", ["dog"])
    guard.detach()


def test_layer_sum_ablation_adds_instead_of_multiplying():
    layers = causal_probs(2, 2, 5, seed=5)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    cfg = FlowConfig(combine="sum", regularize=False)
    got = attention_flow(layers, allowed, cfg)
    want = sum((p * p.amax(-1).mean(-1)[:, None, None]).mean(0) for p in layers)
    torch.testing.assert_close(got, want)
