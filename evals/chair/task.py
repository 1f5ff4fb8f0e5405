"""CHAIR as a runnable `Task`: a seeded sample of images, a description prompt, object scoring.

Protocol defaults follow the CHAIR evaluations of recent hallucination-mitigation papers (OPERA,
VCD, PAI): 500 random images of COCO val2014, the prompt "Please describe this image in detail.",
512 new tokens (64 for the short-caption variant). Ground truth per image is, as in the original
CHAIR code (LisaAnne/Hallucination `utils/chair.py`), the union of the categories annotated in the
instances file and the objects that the reference captions mention, found with the same rules as
in generated captions. `ground_truth="instances"` (`--ground-truth instances`) is our opt-in
variant for the synthetic world, whose annotations are complete and whose reference captions carry
deliberate companion noise: the instances alone. The results record the ground truth, the
vocabulary (`evals.chair.vocabulary`) and the sampled image ids.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from evals.chair.mentions import caption_objects, caption_words, mentions_in_words
from evals.chair.metrics import CHAIR_COUNTS, CHAIR_METRICS, CHAIR_PERCENT_METRICS, caption_counts, chair_metrics
from evals.chair.vocabulary import Vocabulary
from evals.chair.vocabulary import vocabulary as named_vocabulary
from evals.coco import CocoSplit
from evals.errors import CocoLayoutError, NotEnoughImagesError
from evals.task import EvalItem, ItemScore, Task

CHAIR_PROMPT = "Please describe this image in detail."
CHAIR_NUM_IMAGES = 500
CHAIR_MAX_NEW_TOKENS = 512  # long-description setting; 64 is the short one


GROUND_TRUTHS = ("instances+captions", "instances")


def ground_truth_objects(
    annotated: Iterable[str], reference_captions: Iterable[str], vocabulary: Vocabulary | None = None
) -> frozenset[str]:
    """Annotated categories (through the synonym list, as the original maps instance names) plus
    every object the image's reference captions mention.

    Computed when scoring, not when building items, so that a corrected word list re-scores a
    finished run without invalidating it.
    """
    synonyms = {} if vocabulary is None else vocabulary.synonyms
    objects = {synonyms.get(name, name) for name in annotated}
    for caption in reference_captions:
        objects.update(caption_objects(caption, vocabulary))
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


def score_caption(item: EvalItem, output: str, vocabulary: Vocabulary | None = None) -> ItemScore:
    """CHAIR counts of one generated caption, with the mentions behind them."""
    words = caption_words(output, vocabulary)
    mentions = [m.category for m in mentions_in_words(words, vocabulary)]
    ground_truth = ground_truth_objects(
        item.reference["annotated_objects"], item.reference["reference_captions"], vocabulary
    )
    return ItemScore(
        counts=caption_counts(mentions, ground_truth, len(words)),
        details={
            "mentions": mentions,
            "hallucinated": [m for m in mentions if m not in ground_truth],
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
    ground_truth: str = "instances+captions",
    vocabulary: str = "original",
    config: Mapping[str, Any] | None = None,
) -> Task:
    """CHAIR over a seeded image sample; `config` (protocol settings) is recorded with the results.

    `ground_truth="instances+captions"` (the original's) needs `split.captions`; the split's
    reference captions are then stored with each item."""
    if ground_truth not in GROUND_TRUTHS:
        raise ValueError(f"unknown CHAIR ground truth {ground_truth!r}; choose from {', '.join(GROUND_TRUTHS)}")
    named_vocabulary(vocabulary)  # an unknown name fails before the images are sampled
    if ground_truth == "instances+captions" and not split.captions:
        raise CocoLayoutError(
            "CHAIR's ground truth instances+captions needs the reference captions (captions_<split>.json); "
            "none were read: pass --captions, or --ground-truth instances for instance annotations alone"
        )
    items = chair_items(split, image_path, num_images=num_images, seed=seed, prompt=prompt, limit=limit)
    if ground_truth == "instances":
        items = tuple(replace(item, reference={**item.reference, "reference_captions": []}) for item in items)
    settings = {
        "num_images": num_images,
        "seed": seed,
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        "ground_truth": ground_truth,
        "image_ids": [item.reference["image_id"] for item in items],
        **(config or {}),
    }
    return chair_task_from_items(items, max_new_tokens=max_new_tokens, config=settings, vocabulary=vocabulary)


def chair_task_from_items(
    items: tuple[EvalItem, ...],
    *,
    max_new_tokens: int = CHAIR_MAX_NEW_TOKENS,
    config: Mapping[str, Any] | None = None,
    vocabulary: str = "original",
) -> Task:
    """The CHAIR task over given items (built by `chair_task`, or read back from a run's records)."""
    return Task(
        name="chair",
        items=items,
        max_new_tokens=max_new_tokens,
        count_names=CHAIR_COUNTS,
        score=partial(score_caption, vocabulary=named_vocabulary(vocabulary)),
        metrics_from_counts=chair_metrics,
        metric_names=CHAIR_METRICS,
        percent_metrics=CHAIR_PERCENT_METRICS,
        config=dict(config or {}),
        scoring={"vocabulary": vocabulary, "chair_i": "every mention"},  # the original's count, not once per caption
    )
