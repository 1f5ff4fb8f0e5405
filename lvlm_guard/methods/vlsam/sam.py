"""Segmenters for VL-SAM's point prompts: SAM / SAM 2 through transformers, and an offline stand-in.

Real weights: `load_sam("facebook/sam-vit-base")` (or `facebook/sam2.1-hiera-tiny`, or a local
directory holding either) — one code path; tests build a tiny random `SamModel` from a config.

A segmenter answers `predict(image, heatmap, positives, negatives, prior) -> Prediction`: a mask at
the image's size, a score, and a `prior` the next call may take back as its mask prompt (SAM: its
low-resolution mask logits, as in SAM's own interactive loop). VL-SAM's refinement
(`lvlm_guard.methods.vlsam.detect.refine`) is written against this, so SAM and the stand-in run the same
steps.

`MapSegmenter` is the stand-in for machines without SAM weights (no hub here): the mask is the
connected region of the map around the positive point over a threshold. It is not SAM; numbers
measured with it say what the attention maps and the VL-SAM steps around SAM do, not SAM's masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lvlm_guard.errors import InputMismatchError, ModelNotFoundError, UnsupportedModelError
from lvlm_guard.methods.vlsam.prompts import DEFAULT_PROMPTS, PromptConfig, sample_points
from lvlm_guard.methods.vlsam.regions import label_regions


@dataclass
class Segmentation:
    """mask `[H, W]` bool at the image's size, box (x0, y0, x1, y1), SAM's predicted IoU score,
    and the points of the last round."""

    mask: torch.Tensor
    box: tuple[float, float, float, float] | None
    score: float
    positives: list[tuple[int, int]]
    negatives: list[tuple[int, int]]


def load_sam(name_or_path: str, device: str | torch.device = "cpu"):
    """(model, processor) for a SAM or SAM 2 checkpoint (hub id or local directory)."""
    import transformers as tf

    try:
        config = tf.AutoConfig.from_pretrained(name_or_path)
        if config.model_type == "sam2":
            model, processor = tf.Sam2Model, tf.Sam2Processor
        elif config.model_type == "sam":
            model, processor = tf.SamModel, tf.SamProcessor
        else:
            raise UnsupportedModelError(f"load_sam: {name_or_path} is a {config.model_type!r}, not SAM or SAM 2")
        return model.from_pretrained(name_or_path).to(device).eval(), processor.from_pretrained(name_or_path)
    except OSError as err:
        raise ModelNotFoundError(f"load_sam: cannot load {name_or_path!r}: {err}") from err


def mask_box(mask: torch.Tensor) -> tuple[float, float, float, float] | None:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if not len(xs):
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


@dataclass
class Prediction:
    """One segmenter call: mask `[H, W]` bool at the image's size, its score, and what the next call
    may take back as a mask prompt (`prior`; SAM: `[1, 1, h, w]` low-resolution logits)."""

    mask: torch.Tensor
    score: float
    prior: object = None


class MapSegmenter:
    """Offline stand-in for SAM: the connected region of the map around the positive point.

    mask = the region (`connectivity`-connected) holding the positive point of
    {map >= `threshold` * reference}, reference = the map's value at the positive point
    (`relative_to="point"`) or its maximum (`"max"`); `connected=False` keeps every pixel over the
    threshold (with `"max"` and 0.5 that is our earlier `box_from_map` region). A `prior` mask
    (the previous call's mask) restricts the region: the stand-in's version of SAM's mask prompt.
    Negative points are dropped from the mask with their own region. score = the map's mean inside
    the mask. Threshold calibrated on the calib split (`results/vlsam/README.md`).
    """

    def __init__(
        self, threshold: float = 0.5, relative_to: str = "point", connected: bool = True, connectivity: int = 4
    ) -> None:
        if relative_to not in ("point", "max"):
            raise InputMismatchError(f"MapSegmenter: relative_to must be 'point' or 'max', got {relative_to!r}")
        self.threshold = threshold
        self.relative_to = relative_to
        self.connected = connected
        self.connectivity = connectivity

    def predict(self, image, heatmap: torch.Tensor, positives, negatives, prior=None) -> Prediction:
        values = heatmap.detach().cpu().double().numpy()
        x, y = positives[0]
        reference = values[y, x] if self.relative_to == "point" else values.max()
        hot = values >= self.threshold * reference
        if prior is not None:
            hot &= np.asarray(prior, dtype=bool)
            hot[y, x] = True
        if self.connected:
            labels, _ = label_regions(hot, self.connectivity)
            keep = labels == labels[y, x]
        else:
            keep = hot
            labels = None
        for nx, ny in negatives:
            if keep[ny, nx] and (nx, ny) != (x, y):
                if labels is None:
                    labels, _ = label_regions(hot, self.connectivity)
                keep &= labels != labels[ny, nx]
        mask = torch.from_numpy(keep)
        score = float(values[keep].mean()) if keep.any() else 0.0
        return Prediction(mask, score, keep)


class SamRunner:
    """Point-prompted SAM: `predict` (one call, VL-SAM's refinement drives it) and `segment`
    (our earlier loop with `sample_points`)."""

    def __init__(self, model, processor) -> None:
        self.model = model
        self.processor = processor
        self._embedded: tuple[int, torch.Tensor] | None = None  # (id of the image, its embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _embeddings(self, image) -> torch.Tensor:
        if self._embedded is None or self._embedded[0] != id(image):
            pixels = self.processor(images=image, return_tensors="pt")
            self._embedded = (id(image), self.model.get_image_embeddings(pixels["pixel_values"].to(self.device)))
        return self._embedded[1]

    @torch.no_grad()
    def predict(self, image, heatmap: torch.Tensor, positives, negatives, prior=None) -> Prediction:
        """One SAM call with points (label 1 positive, 0 negative) and, when given, SAM's own earlier
        low-resolution logits as the mask prompt. The best of SAM's three masks by predicted IoU."""
        points = [[[float(x), float(y)] for x, y in [*positives, *negatives]]]
        labels = [[1] * len(positives) + [0] * len(negatives)]
        inputs = self.processor(images=image, input_points=[points], input_labels=[labels], return_tensors="pt")
        extra = {} if prior is None else {"input_masks": prior}
        out = self.model(
            image_embeddings=self._embeddings(image),
            input_points=inputs["input_points"].to(self.device, torch.float32),
            input_labels=inputs["input_labels"].to(self.device),
            multimask_output=True,
            **extra,
        )
        scores = out.iou_scores[0, 0]  # [masks]
        k = int(scores.argmax())
        masks = (
            self.processor.post_process_masks(
                out.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
            )
            if "reshaped_input_sizes" in inputs
            else self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"])
        )
        return Prediction(masks[0][0, k].bool(), float(scores[k]), out.pred_masks[0, 0, k][None, None])

    @torch.no_grad()
    def segment(self, image, heatmap: torch.Tensor, cfg: PromptConfig = DEFAULT_PROMPTS) -> Segmentation:
        """Segment the object the `[H, W]` map (at the image's size) points at."""
        width, height = image.size
        if tuple(heatmap.shape) != (height, width):
            raise InputMismatchError(f"SamRunner: map {tuple(heatmap.shape)} vs image {(height, width)}")
        pixels = self.processor(images=image, return_tensors="pt")
        embeddings = self.model.get_image_embeddings(pixels["pixel_values"].to(self.device))
        region, logits, best = None, None, None
        for _ in range(cfg.rounds):
            pos, neg = sample_points(heatmap, cfg, region)
            points = [[[float(x), float(y)] for x, y in pos + neg]]
            labels = [[1] * len(pos) + [0] * len(neg)]
            inputs = self.processor(images=image, input_points=[points], input_labels=[labels], return_tensors="pt")
            extra = {} if logits is None else {"input_masks": logits}
            out = self.model(
                image_embeddings=embeddings,
                input_points=inputs["input_points"].to(self.device, torch.float32),
                input_labels=inputs["input_labels"].to(self.device),
                multimask_output=True,
                **extra,
            )
            scores = out.iou_scores[0, 0]  # [masks]
            k = int(scores.argmax())
            logits = out.pred_masks[0, 0, k][None, None]  # low-res logits, the next round's prompt
            masks = (
                self.processor.post_process_masks(
                    out.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
                )
                if "reshaped_input_sizes" in inputs
                else self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"])
            )
            mask = masks[0][0, k].bool()
            best = Segmentation(mask, mask_box(mask), float(scores[k]), pos, neg)
            region = mask if bool(mask.any()) else None
        return best
