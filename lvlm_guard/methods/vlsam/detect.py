"""VL-SAM's open-ended detection: describe, map each object word, prompt the segmenter, refine, merge, NMS.

Lin, Wang, Tang, NeurIPS 2024, arXiv 2410.05963; no official code. Steps and where they are in the
paper (section numbers of the arXiv version):

1. Words (Sec. 3.1): the VLM answers a question about the image; the object words of its own answer
   are the objects (`describe.describe`); each word's map is read at its generated tokens.
2. Maps (Sec. 3.2): head-weighted, column-regularized attention flow (`attention_maps`).
3. Prompts (Sec. 3.3): threshold, largest connected region, positive = its maximum, negative = the
   global minimum (`prompts.region_points`).
4. Refinement (Sec. 3.3): the first mask goes back to the segmenter as its mask prompt; then the map
   is masked by the mask and the points sampled again (`refine`).
5. Multi-scale (Sec. 3.4): the full image and its four H/2 x W/2 corner crops each go through steps
   1-4; crop results are mapped back to full-image coordinates (`views`, `View`).
6. Question ensemble (Sec. 3.4): N = 10 differently phrased questions, steps 1-5 for each.
7. NMS (Sec. 3.4) over every candidate of every view and question (`nms`).

Deviations, each an option of `VLSamConfig` where it is a choice:
- The paper lets the VLM write its 10 questions; the embedded 18 M model cannot, so the default
  questions are 10 fixed phrasings of the kinds it was trained on (detailed description, short
  caption, object list).
- Thresholds are not given: `threshold` (prompt region, fraction of the map's max) and the NMS IoU
  (0.5, the common default; the paper gives none) are ours, calibrated on the calib split.
- NMS is per category (`nms_class_aware`); the paper does not say. Class-agnostic NMS is an option.
- The paper merges views and questions only through NMS of the detections. To point (evaluation,
  `final_points`) we also need one map per category: the mean, per pixel, of every map of that
  category from views covering the pixel (`merged_maps`); our choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from lvlm_guard.errors import InputMismatchError, InterventionConfigError
from lvlm_guard.methods.vlsam.attention_maps import DEFAULT_FLOW, FlowConfig
from lvlm_guard.methods.vlsam.describe import DescribeConfig, Description, ObjectWords, coco_object_words, describe
from lvlm_guard.methods.vlsam.locate import DEFAULT_ANSWER, DEFAULT_PROMPT, attention_maps, token_maps
from lvlm_guard.methods.vlsam.prompts import PointPrompt, masked_points, region_points
from lvlm_guard.methods.vlsam.sam import MapSegmenter, Prediction, mask_box

if TYPE_CHECKING:
    from lvlm_guard.engine.guard import Guard

# Our 10 questions (the paper has the VLM generate them): phrasings of the kinds the embedded
# model was trained on (lvlm_guard/embedded/world/instructions.py), so its answers stay in distribution.
DEFAULT_QUESTIONS = (
    "Please describe this image in detail.",
    "Write a short caption for this image.",
    "What objects are in this image?",
    "Describe the image briefly.",
    "List the objects you can see in the image.",
    "Give a one-sentence description of the image.",
    "Which objects appear in this picture?",
    "What does this image show? Answer in one sentence.",
    "Describe everything you can see in this image.",
    "Give a detailed description of the image.",
)
WORD_SOURCES = ("description", "template")


@dataclass(frozen=True)
class VLSamConfig:
    """Every part of VL-SAM as a named option; the defaults are the paper's full system.

    words: "description" (Sec. 3.1, the default) or "template" (our earlier flow: each asked
        category teacher-forced in `template_answer` after the question).
    questions / ensemble: the question ensemble (Sec. 3.4, N = 10); ensemble=False asks only
        questions[0].
    multi_scale: full image + 4 corner crops (Sec. 3.4); False: the full image only.
    connected_region: positive point inside the largest connected region (Sec. 3.3); False: the
        global maximum (our earlier rule).
    refinement: the two refinement stages (Sec. 3.3); False: one segmenter call.
    nms / nms_iou / nms_class_aware: NMS over all candidates (Sec. 3.4); IoU 0.5 is our choice.
    threshold: the map threshold of prompt generation, a fraction of the map's max (the paper gives
        none; 0.7 chosen on the calib split by box IoU, 8 images, with MapSegmenter(0.5):
        results/vlsam/vlsam_detect_calib.json; the grid 0.3-0.7 lies within its CIs).
    """

    words: str = "description"
    questions: tuple[str, ...] = DEFAULT_QUESTIONS
    ensemble: bool = True
    multi_scale: bool = True
    connected_region: bool = True
    refinement: bool = True
    nms: bool = True
    nms_iou: float = 0.5
    nms_class_aware: bool = True
    threshold: float = 0.7  # our calibration (calib split), see above
    flow: FlowConfig = DEFAULT_FLOW
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    template_answer: str = DEFAULT_ANSWER

    def __post_init__(self) -> None:
        if self.words not in WORD_SOURCES:
            raise InterventionConfigError(f"VLSamConfig: words must be one of {WORD_SOURCES}, got {self.words!r}")
        if not self.questions:
            raise InterventionConfigError("VLSamConfig: need at least one question")
        if not 0.0 < self.threshold <= 1.0 or not 0.0 <= self.nms_iou <= 1.0:
            raise InterventionConfigError("VLSamConfig: threshold in (0, 1], nms_iou in [0, 1]")

    @property
    def asked(self) -> tuple[str, ...]:
        return self.questions if self.ensemble else self.questions[:1]


# Our configuration before issue 19, reachable by options (with MapSegmenter(0.5, "max", connected=False)).
EARLIER = VLSamConfig(
    words="template",
    questions=(DEFAULT_PROMPT,),
    ensemble=False,
    multi_scale=False,
    connected_region=False,
    refinement=False,
    nms=False,
)


@dataclass(frozen=True)
class View:
    """A view of the image: the pixel box [x0, x1) x [y0, y1) in full-image coordinates."""

    name: str
    x0: int
    y0: int
    x1: int
    y1: int

    def crop(self, image):
        return image if (self.x0, self.y0, self.x1, self.y1) == (0, 0, *image.size) else image.crop(self.box)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1

    def to_full(self, point: tuple[int, int]) -> tuple[int, int]:
        return point[0] + self.x0, point[1] + self.y0

    def to_view(self, point: tuple[int, int]) -> tuple[int, int]:
        return point[0] - self.x0, point[1] - self.y0

    def box_to_full(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        return box[0] + self.x0, box[1] + self.y0, box[2] + self.x0, box[3] + self.y0

    def paste(self, values: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(`[H, W]` full-size tensor with `values` `[y1 - y0, x1 - x0]` in place, `[H, W]` bool coverage)."""
        if tuple(values.shape) != (self.y1 - self.y0, self.x1 - self.x0):
            raise InputMismatchError(f"View.paste: {tuple(values.shape)} into view {self.box}")
        full = torch.zeros(size, dtype=values.dtype)
        covered = torch.zeros(size, dtype=torch.bool)
        full[self.y0 : self.y1, self.x0 : self.x1] = values
        covered[self.y0 : self.y1, self.x0 : self.x1] = True
        return full, covered


def views(width: int, height: int, multi_scale: bool = True) -> list[View]:
    """The full image, then (multi_scale) its four corner crops of W // 2 x H // 2 (Sec. 3.4)."""
    out = [View("full", 0, 0, width, height)]
    if multi_scale:
        w, h = width // 2, height // 2
        for name, x0, y0 in (("top-left", 0, 0), ("top-right", width - w, 0), ("bottom-left", 0, height - h)):
            out.append(View(name, x0, y0, x0 + w, y0 + h))
        out.append(View("bottom-right", width - w, height - h, width, height))
    return out


@dataclass
class WordMap:
    """One object word's map in one view for one question: `heatmap` `[h, w]` at the view's size."""

    view: View
    question: str
    word: str
    category: str
    heatmap: torch.Tensor


@dataclass
class Observations:
    """What the VLM said and where it looked, for every view and question a config asks."""

    size: tuple[int, int]  # (height, width) of the full image
    maps: list[WordMap]
    descriptions: list[tuple[View, Description]] = field(default_factory=list)

    def select(self, cfg: VLSamConfig) -> Observations:
        """The subset a config would have produced (ablations reuse one run of the VLM)."""
        asked = set(cfg.asked)
        names = {v.name for v in views(self.size[1], self.size[0], cfg.multi_scale)}
        keep = [m for m in self.maps if m.question in asked and m.view.name in names]
        said = [(v, d) for v, d in self.descriptions if d.question in asked and v.name in names]
        return Observations(self.size, keep, said)


def observe(
    guard: Guard,
    image,
    cfg: VLSamConfig = VLSamConfig(),
    categories: Sequence[str] | None = None,
    words: ObjectWords = coco_object_words,
) -> Observations:
    """Run the VLM for every view and question of `cfg` (steps 1-2, 5-6 of the module docstring).

    words="description": each question is answered, the answer's object words found (`words`) and
    mapped at their generated tokens; `categories` (if given) keeps only mentions of those.
    words="template": every category of `categories` is teacher-forced in `cfg.template_answer`.
    """
    if cfg.words == "template" and not categories:
        raise InputMismatchError("observe: words='template' needs the categories to ask for")
    width, height = image.size
    out = Observations((height, width), [])
    for view in views(width, height, cfg.multi_scale):
        part = view.crop(image)
        for question in cfg.asked:
            if cfg.words == "template":
                for name in categories:
                    heat = attention_maps(
                        guard, part, cfg.template_answer.format(word=name), [name], question, cfg.flow
                    )
                    out.maps.append(WordMap(view, question, name, name, heat[name]))
                continue
            said = describe(guard, part, question, cfg.describe, words)
            out.descriptions.append((view, said))
            mentions = [m for m in said.mentions if categories is None or m.category in categories]
            if not mentions:
                continue
            spans = [(m.token_start, m.token_end) for m in mentions]
            heats = token_maps(guard, part, question, said.token_ids, spans, [cfg.flow])[0]
            out.maps.extend(WordMap(view, question, m.word, m.category, h) for m, h in zip(mentions, heats))
    return out


def merged_maps(observations: Observations) -> dict[str, torch.Tensor]:
    """Per category, the `[H, W]` mean over its maps of every view covering each pixel (our choice,
    see the module docstring); 0 where no map of the category covers the pixel."""
    total: dict[str, torch.Tensor] = {}
    count: dict[str, torch.Tensor] = {}
    for item in observations.maps:
        full, covered = item.view.paste(item.heatmap.float(), observations.size)
        total[item.category] = total.get(item.category, 0) + full
        count[item.category] = count.get(item.category, 0) + covered.float()
    return {c: total[c] / count[c].clamp_min(1) for c in total}


@dataclass
class Refined:
    """The segmenter's final prediction and every prompt given to it, in order."""

    prediction: Prediction
    prompts: list[PointPrompt]


def refine(segmenter, image, heatmap: torch.Tensor, cfg: VLSamConfig = VLSamConfig()) -> Refined:
    """Prompt generation and the two refinement stages (paper Sec. 3.3).

    call 1: points from `region_points(map)`, no mask prompt.
    stage 1: the same points with call 1's output as the mask prompt (SAM: its low-res logits).
    stage 2: points re-sampled from the map masked by stage 1's mask (`masked_points`), stage 1's
        output again as the mask prompt. An empty mask ends the refinement with the last non-empty.
    refinement=False stops after call 1.
    """
    first_points = region_points(heatmap, cfg.threshold, cfg.connected_region)
    prompts = [first_points]
    best = segmenter.predict(image, heatmap, [first_points.positive], [first_points.negative], None)
    if not cfg.refinement or not bool(best.mask.any()):
        return Refined(best, prompts)
    stage1 = segmenter.predict(image, heatmap, [first_points.positive], [first_points.negative], best.prior)
    prompts.append(first_points)
    if bool(stage1.mask.any()):
        best = stage1
    again = masked_points(heatmap, best.mask.numpy(), cfg.threshold, cfg.connected_region)
    stage2 = segmenter.predict(image, heatmap, [again.positive], [again.negative], best.prior)
    prompts.append(again)
    return Refined(stage2 if bool(stage2.mask.any()) else best, prompts)


@dataclass
class Detection:
    """One object: category, the word said, box (x0, y0, x1, y1) and `[H, W]` mask in full-image
    coordinates, the segmenter's score, the final positive point, and where it came from."""

    category: str
    word: str
    box: tuple[float, float, float, float]
    mask: torch.Tensor
    score: float
    point: tuple[int, int]
    view: str
    question: str


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    iou_threshold: float = 0.5,
    groups: Sequence[str] | None = None,
) -> list[int]:
    """Greedy NMS: indices kept, best score first (ties: lower index first). A box is dropped when
    its IoU with a kept, better box of the same group (all one group when `groups` is None) is
    > `iou_threshold`."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(
            (groups is not None and groups[i] != groups[j]) or box_iou(boxes[i], boxes[j]) <= iou_threshold
            for j in keep
        ):
            keep.append(i)
    return keep


def detections_from(observations: Observations, image, segmenter=None, cfg: VLSamConfig = VLSamConfig()):
    """Steps 3-7 on observations: every word map of every view prompts the segmenter, results go
    back to full-image coordinates, then NMS (`cfg.nms`)."""
    segmenter = segmenter or MapSegmenter()
    found = []
    crops = {}
    for item in observations.maps:
        part = crops.setdefault(item.view.name, item.view.crop(image))
        result = refine(segmenter, part, item.heatmap, cfg)
        mask_view = result.prediction.mask
        box = mask_box(mask_view)
        if box is None:
            continue
        mask, _ = item.view.paste(mask_view, observations.size)
        found.append(
            Detection(
                item.category,
                item.word,
                item.view.box_to_full(box),
                mask,
                result.prediction.score,
                item.view.to_full(result.prompts[-1].positive),
                item.view.name,
                item.question,
            )
        )
    if cfg.nms and found:
        groups = [d.category for d in found] if cfg.nms_class_aware else None
        found = [found[i] for i in nms([d.box for d in found], [d.score for d in found], cfg.nms_iou, groups)]
    else:
        found.sort(key=lambda d: -d.score)
    return found


def final_points(
    maps: dict[str, torch.Tensor], image, segmenter=None, cfg: VLSamConfig = VLSamConfig()
) -> dict[str, tuple[int, int]]:
    """Per category, the last positive point of `refine` on its merged map (what VL-SAM points at)."""
    segmenter = segmenter or MapSegmenter()
    return {c: refine(segmenter, image, m, cfg).prompts[-1].positive for c, m in maps.items()}


@dataclass
class DetectionResult:
    detections: list[Detection]
    maps: dict[str, torch.Tensor]
    points: dict[str, tuple[int, int]]
    observations: Observations


def result_from(observations: Observations, image, segmenter=None, cfg: VLSamConfig = VLSamConfig()):
    """Detections, merged maps and final points of a config from (a superset of) its observations."""
    chosen = observations.select(cfg)
    maps = merged_maps(chosen)
    return DetectionResult(
        detections_from(chosen, image, segmenter, cfg), maps, final_points(maps, image, segmenter, cfg), chosen
    )


def detect(
    guard: Guard,
    image,
    segmenter=None,
    cfg: VLSamConfig = VLSamConfig(),
    categories: Sequence[str] | None = None,
    words: ObjectWords = coco_object_words,
) -> DetectionResult:
    """VL-SAM end to end (module docstring). segmenter None: `MapSegmenter` (no SAM weights)."""
    return result_from(observe(guard, image, cfg, categories, words), image, segmenter, cfg)


def ablated(cfg: VLSamConfig, part: str) -> VLSamConfig:
    """`cfg` with one part switched off: connected_region, refinement, multi_scale, ensemble, nms."""
    if part not in ("connected_region", "refinement", "multi_scale", "ensemble", "nms"):
        raise InterventionConfigError(f"ablated: unknown part {part!r}")
    return replace(cfg, **{part: False})


__all__ = [
    "DEFAULT_QUESTIONS",
    "EARLIER",
    "Detection",
    "DetectionResult",
    "Observations",
    "VLSamConfig",
    "View",
    "WordMap",
    "ablated",
    "box_iou",
    "detect",
    "detections_from",
    "final_points",
    "merged_maps",
    "nms",
    "observe",
    "refine",
    "result_from",
    "views",
]
