"""Building POPE question sets from any COCO-format split (Li et al., EMNLP 2023, Sec. 4.1).

Protocol, as in the paper and the official builder (AoiDragon/POPE `main.py`, `utils.py`), which
we read to match and re-implemented:

- Images: `num_images` (500) drawn at random among images with at least `per_image` (3) distinct
  annotated categories.
- Per image, `per_image` positives ("yes") and as many negatives ("no"); the file interleaves them
  positive, negative, positive, ... as the official files do.
- Object statistics are taken over the *sampled* images, like the official builder: "popular"
  ranks categories by the number of sampled images that show them; "adversarial" ranks, for the
  positive the negative is paired with, the categories by the number of sampled images in which
  they appear together with it. The paper's text says "co-occurring with the ground-truth objects";
  the official code pairs each negative with one positive, and its published files agree with that
  (checked on image COCO_val2014_000000310196: snowboard->backpack, person->car, skis->dog), so we
  pair too.
- A negative is never one of the image's annotated categories and never asked twice per image.
  "random" draws uniformly among the categories seen in the sampled images; "popular" and
  "adversarial" fall back to such a draw when their ranking is exhausted, as the official code does.

Choices where the official code leaves things to chance or to file order, made deterministic here:
positives are a seeded random sample of the image's categories (the official takes the first three
of its pre-extracted list, whose order is not documented); ranking ties are broken by category
name; every draw comes from `random.Random` seeded from `seed` and the strategy name, so one seed
gives byte-identical files. The question text puts "an" before a vowel, as the official files do
("Is there an orange in the image?").
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evals.coco import CocoSplit
from evals.errors import NotEnoughCategoriesError, NotEnoughImagesError, UnknownPopeSplitError
from evals.pope.files import PopeQuestion

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
POPE_NUM_IMAGES = 500  # paper Sec. 4.1 / official main.py --img_num 500
POPE_PER_IMAGE = 3  # official main.py --sample_num 3: 3 yes + 3 no per image


POPE_MIN_IMAGES = 2  # negatives come from the sampled images' categories: one image leaves none to ask


def question_text(obj: str) -> str:
    """'Is there a/an {object} in the image?', POPE's template (official main.py --template)."""
    article = "an" if obj[:1].lower() in "aeiou" else "a"
    return f"Is there {article} {obj} in the image?"


@dataclass(frozen=True)
class PopeImage:
    """A sampled image: its file, every annotated category and the ones asked as positives."""

    file_name: str
    objects: tuple[str, ...]
    positives: tuple[str, ...]


def sample_pope_images(
    split: CocoSplit, num_images: int = POPE_NUM_IMAGES, seed: int = 0, per_image: int = POPE_PER_IMAGE
) -> tuple[PopeImage, ...]:
    """Draw the images (and their positives) that all three POPE splits share."""
    eligible = [
        im for im in sorted(split.images, key=lambda im: im.image_id) if len(split.objects[im.image_id]) >= per_image
    ]
    if len(eligible) < num_images:
        raise NotEnoughImagesError(
            f"POPE needs {num_images} images with at least {per_image} object categories; "
            f"the split has {len(eligible)} of {len(split.images)} images that qualify"
        )
    rng = random.Random(seed)
    chosen = rng.sample(eligible, num_images)
    sampled = []
    for image in chosen:
        objects = split.objects[image.image_id]
        sampled.append(PopeImage(image.file_name, objects, tuple(rng.sample(objects, per_image))))
    return tuple(sampled)


def object_frequency(images: Sequence[PopeImage]) -> Counter[str]:
    """Number of images showing each category."""
    return Counter(obj for image in images for obj in image.objects)


def co_occurrence(images: Sequence[PopeImage]) -> dict[str, Counter[str]]:
    """co[a][b]: number of images that show both a and b (a != b)."""
    table: dict[str, Counter[str]] = {}
    for image in images:
        for a in image.objects:
            row = table.setdefault(a, Counter())
            row.update(b for b in image.objects if b != a)
    return table


def _ranked(counts: Mapping[str, int]) -> list[str]:
    """Names by count, highest first; ties by name."""
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _draw(rng: random.Random, pool: Sequence[str], excluded: set[str], image: PopeImage) -> str:
    candidates = [name for name in pool if name not in excluded]
    if not candidates:
        raise NotEnoughCategoriesError(
            f"no category left to ask as a negative for {image.file_name} (it shows {len(image.objects)}, "
            f"the sampled images {len(pool)} in all); sample more images (--num-images)"
        )
    return rng.choice(candidates)


def build_pope_questions(images: Sequence[PopeImage], strategy: str, seed: int = 0) -> tuple[PopeQuestion, ...]:
    """One POPE split over already-sampled images; question ids count from 1 as in the official files."""
    if strategy not in POPE_SPLITS:
        raise UnknownPopeSplitError(f"unknown POPE split {strategy!r}; choose from {', '.join(POPE_SPLITS)}")
    frequency = object_frequency(images)
    pool = sorted(frequency)  # categories seen in the sampled images; sorted so draws are reproducible
    popular = _ranked(frequency)
    co = co_occurrence(images)
    adversarial = {obj: _ranked(row) for obj, row in co.items()}
    rng = random.Random(f"{seed}:{strategy}")

    questions: list[PopeQuestion] = []
    for image in images:
        asked: set[str] = set(image.objects)  # never a negative that is in the image
        for positive in image.positives:
            questions.append(PopeQuestion(len(questions) + 1, image.file_name, question_text(positive), "yes"))
            ranking = {"random": [], "popular": popular, "adversarial": adversarial.get(positive, [])}[strategy]
            negative = next((name for name in ranking if name not in asked), None)
            if negative is None:
                negative = _draw(rng, pool, asked, image)
            asked.add(negative)
            questions.append(PopeQuestion(len(questions) + 1, image.file_name, question_text(negative), "no"))
    return tuple(questions)


def build_pope_splits(
    split: CocoSplit,
    num_images: int = POPE_NUM_IMAGES,
    seed: int = 0,
    strategies: Sequence[str] = POPE_SPLITS,
    per_image: int = POPE_PER_IMAGE,
) -> dict[str, tuple[PopeQuestion, ...]]:
    """The POPE splits of a COCO-format split: same images and positives, different negatives."""
    images = sample_pope_images(split, num_images, seed, per_image)
    return {strategy: build_pope_questions(images, strategy, seed) for strategy in strategies}
