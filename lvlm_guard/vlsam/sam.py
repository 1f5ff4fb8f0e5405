"""SAM / SAM 2 through transformers: load, then run point prompts with iterative refinement.

Real weights: `load_sam("facebook/sam-vit-base")` (or `facebook/sam2.1-hiera-tiny`, or a local
directory holding either) — one code path; tests build a tiny random `SamModel` from a config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvlm_guard.errors import InputMismatchError, ModelNotFoundError, UnsupportedModelError
from lvlm_guard.vlsam.prompts import DEFAULT_PROMPTS, PromptConfig, sample_points


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


class SamRunner:
    """Point-prompted SAM with VL-SAM's iterative refinement (see `prompts.py`)."""

    def __init__(self, model, processor) -> None:
        self.model = model
        self.processor = processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
