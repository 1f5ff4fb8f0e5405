"""CHAIR as a runnable `Task`: a seeded sample of images, a description prompt, object scoring.

Protocol defaults follow the CHAIR evaluations of recent hallucination-mitigation papers (OPERA,
VCD, PAI): 500 random images of COCO val2014, the prompt "Please describe this image in detail.",
512 new tokens (64 for the short-caption variant). Ground truth per image is, as in the original
CHAIR code (LisaAnne/Hallucination `utils/chair.py`), the union of the categories annotated in the
instances file and the objects that the reference captions mention, found with the same rules as
in generated captions. Without a captions file (or with `--ground-truth instances`, meant for the
synthetic world, whose annotations are complete and whose reference captions carry deliberate
companion noise), ground truth is the instances alone, and the results record that.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from evals.chair.mentions import mentioned_objects
from evals.chair.metrics import CHAIR_COUNTS, CHAIR_METRICS, CHAIR_PERCENT_METRICS, caption_counts, chair_metrics
from evals.coco import CocoSplit
from evals.errors import NotEnoughImagesError
from evals.task import EvalItem, ItemScore, Task

CHAIR_PROMPT = "Please describe this image in detail."
CHAIR_NUM_IMAGES = 500
CHAIR_MAX_NEW_TOKENS = 512  # long-description setting; 64 is the short one


def ground_truth_objects(annotated: Iterable[str], reference_captions: Iterable[str]) -> frozenset[str]:
    """Annotated categories plus objects mentioned by the image's reference captions.

    Computed when scoring, not when building items, so that a corrected synonym list re-scores a
    finished run without invalidating it.
    """
    objects = set(annotated)
    for caption in reference_captions:
        objects |= mentioned_objects(caption)
    return frozenset(objects)


def chair_items(
    split: CocoSplit,
    image_path: Callable[[str], Path],
    *,
    num_images: int = CHAIR_NUM_IMAGES,
    seed: int = 0,
    prompt: str = CHAIR_PROMPT,
    limit: int | None = None,
) -> tuple[EvalItem, ...]:
    """A seeded sample of `num_images` images (from all images of the split), one item each."""
    images = sorted(split.images, key=lambda im: im.image_id)
    if len(images) < num_images:
        raise NotEnoughImagesError(f"CHAIR asks for {num_images} images; the split has {len(images)}")
    chosen = random.Random(seed).sample(images, num_images)
    if limit is not None:
        chosen = chosen[:limit]
    return tuple(
        EvalItem(
            item_id=str(image.image_id),
            group="all",
            image_file=image.file_name,
            image_path=str(image_path(image.file_name)),
            prompt=prompt,
            reference={
                "image_id": image.image_id,
                "annotated_objects": list(split.objects.get(image.image_id, ())),
                "reference_captions": list(split.captions.get(image.image_id, ())),
            },
        )
        for image in chosen
    )


def score_caption(item: EvalItem, output: str) -> ItemScore:
    """CHAIR counts of one generated caption, with the objects behind them."""
    mentioned = mentioned_objects(output)
    ground_truth = ground_truth_objects(item.reference["annotated_objects"], item.reference["reference_captions"])
    return ItemScore(
        counts=caption_counts(mentioned, ground_truth, output),
        details={
            "mentioned": sorted(mentioned),
            "hallucinated": sorted(mentioned - ground_truth),
            "ground_truth": sorted(ground_truth),
        },
    )


def chair_task(
    split: CocoSplit,
    image_path: Callable[[str], Path],
    *,
    num_images: int = CHAIR_NUM_IMAGES,
    seed: int = 0,
    prompt: str = CHAIR_PROMPT,
    max_new_tokens: int = CHAIR_MAX_NEW_TOKENS,
    limit: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> Task:
    """CHAIR over a seeded image sample; `config` (protocol settings) is recorded with the results."""
    settings = {
        "num_images": num_images,
        "seed": seed,
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        "ground_truth": "instances+captions" if split.captions else "instances",
        **(config or {}),
    }
    return Task(
        name="chair",
        items=chair_items(split, image_path, num_images=num_images, seed=seed, prompt=prompt, limit=limit),
        max_new_tokens=max_new_tokens,
        count_names=CHAIR_COUNTS,
        score=score_caption,
        metrics_from_counts=chair_metrics,
        metric_names=CHAIR_METRICS,
        percent_metrics=CHAIR_PERCENT_METRICS,
        config=settings,
    )
