"""VL-SAM: flow vs float64 reference, point sampling, tiny-SAM wiring, maps on a tiny LLaVA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_llava

import lvlm_guard as lg
from lvlm_guard.errors import InputMismatchError, InterventionConfigError
from lvlm_guard.methods import vlsam
from lvlm_guard.methods.vlsam import (
    FlowConfig,
    FlowTaps,
    PromptConfig,
    SamRunner,
    attention_flow,
    attention_maps_for_flows,
    box_from_map,
    sample_points,
)
from lvlm_guard.methods.vlsam.attention_maps import map_to_image, regularize_columns


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
    found = vlsam.locate(guard, img, "dog")
    assert found.heatmap.shape == (36, 44)
    assert float(found.heatmap.min()) == 0.0 and float(found.heatmap.max()) == 1.0
    x, y = found.point
    assert found.heatmap[y, x] == 1.0
    maps = vlsam.attention_maps(guard, img, "a dog and a cat", ["dog", "cat"])
    assert set(maps) == {"dog", "cat"} and not torch.equal(maps["dog"], maps["cat"])
    assert guard.state.taps is None  # nothing left recording
    # several flows from one forward == one forward per flow
    flows = [FlowConfig(), FlowConfig(combine="rollout", renormalize=True, image_only=True, start_layer=1)]
    both = attention_maps_for_flows(guard, img, "a dog and a cat", ["dog"], flows)
    for cfg, maps in zip(flows, both):
        torch.testing.assert_close(maps["dog"], vlsam.attention_maps(guard, img, "a dog and a cat", ["dog"], flow=cfg)["dog"])
    with pytest.raises(InterventionConfigError):
        vlsam.locate(guard, img, "dog", flow=FlowConfig(start_layer=99))
    model2, processor2 = tiny_sam()
    seg = vlsam.segment(guard, img, SamRunner(model2, processor2), "dog")
    assert seg[0].segmentation.mask.shape == (36, 44)
    with pytest.raises(InputMismatchError):
        vlsam.attention_maps(guard, img, "a cat", ["dog"])
    guard.detach()


def test_layer_sum_ablation_adds_instead_of_multiplying():
    layers = causal_probs(2, 2, 5, seed=5)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    cfg = FlowConfig(combine="sum", regularize=False)
    got = attention_flow(layers, allowed, cfg)
    want = sum((p * p.amax(-1).mean(-1)[:, None, None]).mean(0) for p in layers)
    torch.testing.assert_close(got, want)


# --- issue 19: the VL-SAM system (regions, prompts, refinement, views, ensemble, NMS, words) -----

from lvlm_guard.methods.vlsam import (  # noqa: E402
    MapSegmenter,
    Observations,
    Prediction,
    VLSamConfig,
    label_regions,
    largest_region,
    masked_points,
    mention_spans,
    nms,
    refine,
    region_points,
    views,
)
from lvlm_guard.methods.vlsam.detect import WordMap, box_iou, merged_maps  # noqa: E402


def two_blobs() -> np.ndarray:
    """float64 map: a big plateau blob (left) and a smaller blob with the higher peak (right)."""
    m = np.zeros((12, 16), dtype=np.float64)
    m[2:9, 1:6] = 0.6  # 35 pixels
    m[5, 3] = 0.7  # the big blob's own maximum
    m[3:6, 10:13] = 0.8  # 9 pixels
    m[4, 11] = 1.0  # global maximum, in the small blob
    m[11, 15] = -0.5  # global minimum
    return m


def bfs_labels(binary: np.ndarray) -> list[set]:
    """Reference regions by plain BFS, 4-connected."""
    seen, regions = set(), []
    for y in range(binary.shape[0]):
        for x in range(binary.shape[1]):
            if binary[y, x] and (y, x) not in seen:
                todo, region = [(y, x)], set()
                seen.add((y, x))
                while todo:
                    cy, cx = todo.pop()
                    region.add((cy, cx))
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < binary.shape[0] and 0 <= nx < binary.shape[1] and binary[ny, nx]:
                            if (ny, nx) not in seen:
                                seen.add((ny, nx))
                                todo.append((ny, nx))
                regions.append(region)
    return regions


def test_largest_region_wins_over_highest_peak_and_points_follow():
    m = two_blobs()
    big = largest_region(m >= 0.5)
    assert big.sum() == 35 and big[5, 3] and not big[4, 11]
    p = region_points(m, threshold=0.5)
    assert p.positive == (3, 5)  # max inside the largest region, not the global max (11, 4)
    assert p.negative == (15, 11)  # global minimum
    q = region_points(m, threshold=0.5, connected_region=False)
    assert q.positive == (11, 4) and q.negative == (15, 11)


def test_region_ties_are_first_in_raster_order_and_labels_match_bfs():
    tie = np.zeros((6, 9), dtype=bool)
    tie[3:5, 1:3] = True  # 4 pixels, starts on row 3
    tie[0:2, 6:8] = True  # 4 pixels, starts on row 0: first in raster order
    assert largest_region(tie)[0, 6] and not largest_region(tie)[3, 1]
    flat = np.zeros((4, 4))
    assert region_points(flat).positive == (0, 0) and region_points(flat).negative == (0, 0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        binary = rng.random((13, 17)) < 0.45
        labels, count = label_regions(binary)
        want = bfs_labels(binary)
        assert count == len(want)
        got = [set(zip(*np.nonzero(labels == k))) for k in range(1, count + 1)]
        assert sorted(map(sorted, got)) == sorted(map(sorted, want))
        firsts = [min(r) for r in got]
        assert firsts == sorted(firsts)  # labels in raster order of first pixel
    diagonal = np.eye(3, dtype=bool)
    assert label_regions(diagonal)[1] == 3 and label_regions(diagonal, connectivity=8)[1] == 1


def test_masked_points_resample_inside_the_mask():
    m = two_blobs()
    mask = np.zeros_like(m, dtype=bool)
    mask[3:6, 10:13] = True
    p = masked_points(m, mask, threshold=0.5)
    assert p.positive == (11, 4) and mask[4, 11]
    assert not mask[p.negative[1], p.negative[0]] and p.negative == (15, 11)
    assert masked_points(m, np.zeros_like(mask)).positive == region_points(m).positive


class RecordingSegmenter:
    """Returns fixed masks in turn and records every call's prompts and prior."""

    def __init__(self, masks):
        self.masks, self.calls = list(masks), []

    def predict(self, image, heatmap, positives, negatives, prior=None):
        self.calls.append((positives, negatives, prior))
        mask = torch.from_numpy(self.masks[len(self.calls) - 1])
        return Prediction(mask, float(len(self.calls)), f"prior-{len(self.calls)}")


def test_refinement_feeds_the_mask_back_and_resamples_in_it():
    m = torch.from_numpy(two_blobs())
    small = np.zeros((12, 16), dtype=bool)
    small[3:6, 10:13] = True
    seg = RecordingSegmenter([small, small, small])
    out = refine(seg, None, m, VLSamConfig(threshold=0.5))
    assert len(seg.calls) == 3
    (p1, n1, prior1), (p2, n2, prior2), (p3, n3, prior3) = seg.calls
    assert prior1 is None and p1 == [(3, 5)] and n1 == [(15, 11)]
    assert prior2 == "prior-1" and p2 == p1  # stage 1: same points, first output as mask prompt
    assert prior3 == "prior-2" and p3 == [(11, 4)]  # stage 2: re-sampled inside stage 1's mask
    assert out.prediction.score == 3.0 and out.prompts[-1].positive == (11, 4)
    seg = RecordingSegmenter([small])
    assert refine(seg, None, m, VLSamConfig(refinement=False)).prediction.score == 1.0 and len(seg.calls) == 1


def test_map_segmenter_is_the_region_around_the_point():
    m = torch.from_numpy(two_blobs())
    pred = MapSegmenter(0.5).predict(None, m, [(3, 5)], [(15, 11)])
    assert int(pred.mask.sum()) == 35 and pred.mask[5, 3]
    earlier = MapSegmenter(0.5, relative_to="max", connected=False).predict(None, m, [(11, 4)], [])
    assert torch.equal(earlier.mask, torch.from_numpy(two_blobs() >= 0.5))  # the earlier box_from_map region
    prior = np.zeros((12, 16), dtype=bool)
    prior[4:6, 2:5] = True
    assert int(MapSegmenter(0.5).predict(None, m, [(3, 5)], [], prior).mask.sum()) == 6


def brute_force_nms(boxes, scores, thr, groups):
    """The unique subset S: no two same-group members overlap > thr, and every non-member overlaps
    > thr a same-group member that ranks above it (found by trying every subset)."""
    n = len(boxes)
    rank = sorted(range(n), key=lambda i: (-scores[i], i))
    pos = {i: r for r, i in enumerate(rank)}

    def clash(i, j):
        return groups[i] == groups[j] and box_iou(boxes[i], boxes[j]) > thr

    for bits in range(1 << n):
        s = [i for i in range(n) if bits >> i & 1]
        if any(clash(i, j) for i in s for j in s if i < j):
            continue
        if all(any(clash(i, j) and pos[j] < pos[i] for j in s) for i in range(n) if i not in s):
            return sorted(s, key=pos.get)
    raise AssertionError("no subset")


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(8):
        x, y = rng.uniform(0, 20, 2)
        w, h = rng.uniform(4, 14, 2)
        boxes.append((x, y, x + w, y + h))
    scores = rng.choice([0.1, 0.5, 0.9], 8).tolist()  # ties on purpose
    groups = rng.choice(["a", "b"], 8).tolist()
    assert nms(boxes, scores, 0.3, groups) == brute_force_nms(boxes, scores, 0.3, groups)
    assert nms(boxes, scores, 0.3) == brute_force_nms(boxes, scores, 0.3, ["g"] * 8)


def test_views_and_crop_coordinates_round_trip():
    vs = views(45, 31)
    assert [v.name for v in vs] == ["full", "top-left", "top-right", "bottom-left", "bottom-right"]
    assert vs[1].box == (0, 0, 22, 15) and vs[4].box == (23, 16, 45, 31)
    assert all(v.x1 - v.x0 == 22 and v.y1 - v.y0 == 15 for v in vs[1:])
    assert len(views(45, 31, multi_scale=False)) == 1
    img = Image.fromarray(np.arange(31 * 45 * 3, dtype=np.uint8).reshape(31, 45, 3))
    for v in vs:
        crop = np.array(v.crop(img))
        for point in [(0, 0), (5, 7), (v.x1 - v.x0 - 1, v.y1 - v.y0 - 1)]:
            fx, fy = v.to_full(point)
            assert v.to_view((fx, fy)) == point
            assert (crop[point[1], point[0]] == np.array(img)[fy, fx]).all()  # same pixel
        values = torch.rand(v.y1 - v.y0, v.x1 - v.x0)
        full, covered = v.paste(values, (31, 45))
        assert torch.equal(full[v.y0 : v.y1, v.x0 : v.x1], values) and int(covered.sum()) == values.numel()
        assert v.box_to_full((1, 2, 3, 4)) == (1 + v.x0, 2 + v.y0, 3 + v.x0, 4 + v.y0)


def test_ensemble_and_views_merge_by_per_pixel_mean_and_select_subsets():
    vs = views(8, 6)
    a, b = torch.full((6, 8), 0.2), torch.full((6, 8), 0.6)
    corner = torch.ones(3, 4)
    obs = Observations(
        (6, 8),
        [
            WordMap(vs[0], "q1", "dog", "dog", a),
            WordMap(vs[0], "q2", "puppy", "dog", b),
            WordMap(vs[4], "q1", "dog", "dog", corner),
            WordMap(vs[0], "q2", "cat", "cat", a),
        ],
    )
    merged = merged_maps(obs)
    assert torch.allclose(merged["dog"][0, 0], torch.tensor(0.4))  # two questions, full view only
    assert torch.allclose(merged["dog"][5, 7], torch.tensor((0.2 + 0.6 + 1.0) / 3))  # + the corner view
    assert torch.equal(merged["cat"], a)
    cfg = VLSamConfig(questions=("q1", "q2"))
    assert len(obs.select(cfg).maps) == 4
    assert [m.question for m in obs.select(VLSamConfig(questions=("q1", "q2"), ensemble=False)).maps] == ["q1", "q1"]
    assert [m.view.name for m in obs.select(VLSamConfig(questions=("q1", "q2"), multi_scale=False)).maps] == [
        "full",
        "full",
        "full",
    ]


class WordTokenizer:
    """Whitespace tokenizer: token k is the k-th word, decoded with single spaces."""

    def __init__(self, words):
        self.words = words

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.words[i] for i in ids)


def test_words_from_a_description_at_their_token_positions():
    words = "A woman is next to a red traffic light and two hot dogs .".split()
    tok = WordTokenizer(words)
    ids = list(range(len(words)))
    found = [("woman", "person", 2, 7), ("traffic light", "traffic light", 25, 38), ("hot dogs", "hot dog", 47, 55)]
    text, mentions = mention_spans(tok, ids, lambda t: found)
    assert text[2:7] == "woman" and text[25:38] == "traffic light" and text[47:55] == "hot dogs"
    assert [(m.category, m.token_start, m.token_end) for m in mentions] == [
        ("person", 1, 2),
        ("traffic light", 7, 9),
        ("hot dog", 11, 13),
    ]
    pytest.importorskip("nltk")
    from lvlm_guard.methods.vlsam.describe import coco_object_words

    real = mention_spans(tok, ids)[1]  # CHAIR's finder on the same text
    assert [(m.word, m.category, m.token_start, m.token_end) for m in real] == [
        ("woman", "person", 1, 2),
        ("traffic light", "traffic light", 7, 9),
        ("hot dogs", "hot dog", 11, 13),
    ]
    assert coco_object_words("No objects here.") == []


def test_description_flow_on_tiny_llava_reads_the_generated_tokens():
    from lvlm_guard.methods.vlsam import describe, token_maps
    from lvlm_guard.methods.vlsam.describe import DescribeConfig

    model, processor = tiny_llava()
    guard = lg.attach(model, processor, [])
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (36, 44, 3), dtype=np.uint8))
    said = describe(guard, img, "Describe.", DescribeConfig(max_new_tokens=6), words=lambda t: [("x", "x", 0, 1)])
    assert len(said.token_ids) >= 1 and said.mentions[0].token_start == 0
    (heat,) = token_maps(guard, img, "Describe.", said.token_ids, [(0, 1)], [FlowConfig()])[0]
    assert heat.shape == (36, 44)
    # the map is read at the given token: another span gives another map
    ids = list(said.token_ids) + [5, 6]
    one, two = token_maps(guard, img, "Describe.", ids, [(0, 1), (len(ids) - 1, len(ids))], [FlowConfig()])[0]
    assert not torch.equal(one, two)
    with pytest.raises(InputMismatchError):
        token_maps(guard, img, "Describe.", ids, [(0, len(ids) + 1)], [FlowConfig()])
    guard.detach()


def reference_paper_flow(layers, n_layers_denominator=None):
    """Paper Eq. 1-3 entry by entry in float64: W_h = mean_i max_j S, S' = mean_h W_h S_h, column j
    times 1 - (L0_j - 1)/D (D = N, or L), S~ = (I + S')(I + S~) as explicit sums over k."""
    n = layers[0].shape[-1]
    flow = None
    for s in layers:
        heads = s.shape[0]
        w = [sum(max(s[h, i, j].item() for j in range(n)) for i in range(n)) / n for h in range(heads)]
        a = [[sum(w[h] * s[h, i, j].item() for h in range(heads)) / heads for j in range(n)] for i in range(n)]
        for j in range(n):
            l0 = n - j  # causal: rows j..n-1 see key j
            d = n if n_layers_denominator is None else n_layers_denominator
            factor = max(0.0, 1 - (l0 - 1) / d)
            for i in range(n):
                a[i][j] *= factor
        if flow is None:
            flow = a
            continue
        flow = [
            [sum(((i == k) + a[i][k]) * ((k == j) + flow[k][j]) for k in range(n)) for j in range(n)] for i in range(n)
        ]
    return torch.tensor(flow, dtype=torch.float64)


@pytest.mark.parametrize("denominator", ["tokens", "layers"])
def test_flow_against_entrywise_paper_reference(denominator):
    layers = causal_probs(3, 2, 6, seed=11)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    got = attention_flow(layers, allowed, FlowConfig(regularize_denominator=denominator))
    want = reference_paper_flow(layers, None if denominator == "tokens" else 3)
    torch.testing.assert_close(got, want)
    with pytest.raises(InterventionConfigError):
        FlowConfig(regularize_denominator="rows")


def test_refinement_through_tiny_sam_takes_its_own_logits_back():
    model, processor = tiny_sam()
    runner = SamRunner(model, processor)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    first = runner.predict(img, blob(), [(35, 10)], [(0, 39)])
    assert first.mask.shape == (40, 50) and first.prior.dim() == 4
    again = runner.predict(img, blob(), [(35, 10)], [(0, 39)], first.prior)
    assert again.mask.shape == (40, 50) and not torch.equal(again.prior, first.prior)  # the mask prompt counts
    out = refine(runner, img, blob(), VLSamConfig(threshold=0.5))
    assert out.prediction.mask.shape == (40, 50) and len(out.prompts) in (1, 3)
