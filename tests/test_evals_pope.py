"""POPE: answer parsing, metrics, question building and the official files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evals.coco import CocoImage, CocoSplit
from evals.errors import NotEnoughImagesError, PopeFormatError, UnknownPopeSplitError
from evals.pope.build import build_pope_splits, question_text, sample_pope_images
from evals.pope.files import PopeQuestion, read_pope_file, split_name_of, write_pope_file
from evals.pope.metrics import confusion_counts, pope_metrics
from evals.pope.parse import first_sentence, parse_yes_no, parse_yes_no_official
from evals.pope.task import pope_task

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "pope"  # the workplace's copy


@pytest.mark.parametrize(
    ("text", "ours", "official"),
    [
        ("No, there is not.", "no", "no"),
        ("Yes.", "yes", "yes"),
        ("There is a dog but no cat.", "no", "no"),
        ("I do not see a cat", "no", "no"),
        ("", "yes", "yes"),  # POPE counts an empty answer as yes; the runner reports how many were empty
        ("Yes, there is a cat, though it is not large.", "yes", "no"),  # leading answer word decides
        ("There isn't a cat in the image.", "no", "yes"),  # contractions are negations
        ("Not that I can see.", "no", "yes"),  # case does not matter
        ("NO!", "no", "yes"),
        ("Yes! There is no doubt.", "yes", "no"),  # first sentence ends at ! as well
        ("  \n\nNo", "no", "yes"),  # first non-empty sentence
        ("There is a cat on the sofa. It is not sleeping.", "yes", "yes"),  # only the first sentence counts
        ("I cannot see any cat.", "no", "yes"),
    ],
)
def test_parse_yes_no(text, ours, official):
    assert parse_yes_no(text) == ours
    assert parse_yes_no_official(text) == official


def test_pope_task_reads_answers_with_the_official_rule_by_default():
    questions = {"random": [PopeQuestion(1, "a.jpg", "Is there a cat in the image?", "no")]}
    answers = {"NO!": "yes", "There isn't a cat.": "yes", "Yes, but it is not large.": "no", "No.": "no"}
    for rule, read in (
        ("official", answers),
        ("ours", {"NO!": "no", "There isn't a cat.": "no", "Yes, but it is not large.": "yes", "No.": "no"}),
    ):
        task = pope_task(questions, Path, answer_rule=rule) if rule == "ours" else pope_task(questions, Path)
        assert task.scoring == {"answer_rule": rule}
        item = task.items[0]
        for text, expected in read.items():
            score = task.score(item, text)
            assert score.details["prediction"] == expected, (rule, text)
            assert score.counts[-1] == float(text != "No.")  # the two rules disagree on all but "No."


def test_first_sentence():
    assert first_sentence("Yes. No.") == "Yes"
    assert first_sentence("...  ") == ""


def test_metrics_on_hand_computed_confusion():
    # tp=3 fp=1 tn=4 fn=2 -> acc 7/10, precision 3/4, recall 3/5, f1 2/3, yes ratio 4/10
    pairs = [("yes", "yes")] * 3 + [("yes", "no")] + [("no", "no")] * 4 + [("no", "yes")] * 2
    counts = np.sum([confusion_counts(p, label) for p, label in pairs], axis=0)
    assert counts.tolist() == [3, 1, 4, 2]
    m = {k: float(v) for k, v in pope_metrics(counts).items()}
    assert m == pytest.approx({"accuracy": 0.7, "precision": 0.75, "recall": 0.6, "f1": 2 / 3, "yes_ratio": 0.4})
    # a model that never says yes: precision and F1 are 0 rather than a division by zero
    assert float(pope_metrics(np.array([0, 0, 5, 5]))["f1"]) == 0.0


# Five images; frequencies person 3, car 2, cup 2, dining table 2, dog 2, then 1 each.
FIVE = {
    1: ("dog", "frisbee", "person"),
    2: ("car", "dog", "person"),
    3: ("car", "person", "truck"),
    4: ("bowl", "cup", "dining table"),
    5: ("chair", "cup", "dining table"),
}
POOL = {obj for objs in FIVE.values() for obj in objs}
# co-occurrence rankings by hand (count desc, then name)
CO_RANK = {
    "person": ["car", "dog", "frisbee", "truck"],  # car 2, dog 2, frisbee 1, truck 1
    "dog": ["person", "car", "frisbee"],  # person 2, car 1, frisbee 1
    "frisbee": ["dog", "person"],
    "car": ["person", "dog", "truck"],
    "truck": ["car", "person"],
    "cup": ["dining table", "bowl", "chair"],
    "bowl": ["cup", "dining table"],
    "dining table": ["cup", "bowl", "chair"],
    "chair": ["cup", "dining table"],
}
POPULAR = ["person", "car", "cup", "dining table", "dog", "bowl", "chair", "frisbee", "truck"]


def five_image_split() -> CocoSplit:
    images = tuple(CocoImage(i, f"img{i}.jpg") for i in FIVE)
    categories = {i: name for i, name in enumerate(sorted(POOL), start=1)}
    return CocoSplit(images=images, categories=categories, objects=FIVE, captions={})


def _pairs(questions):
    """(image, positive, negative) triples: the files interleave yes, no, yes, no, ..."""
    assert [q.label for q in questions] == ["yes", "no"] * (len(questions) // 2)
    return [(questions[i].image, questions[i].object, questions[i + 1].object) for i in range(0, len(questions), 2)]


def test_builder_negatives_and_strategies():
    splits = build_pope_splits(five_image_split(), num_images=5, seed=3)
    objects_of = {f"img{i}.jpg": set(objs) for i, objs in FIVE.items()}
    for questions in splits.values():
        assert len(questions) == 30 and [q.question_id for q in questions] == list(range(1, 31))
        by_image: dict[str, list[str]] = {}
        for image, positive, negative in _pairs(questions):
            assert positive in objects_of[image]
            assert negative not in objects_of[image] and negative in POOL  # never in the ground truth
            by_image.setdefault(image, []).append(negative)
        assert all(len(set(negs)) == 3 for negs in by_image.values())  # never asked twice
    # popular: the most frequent absent categories, in order of frequency
    for image, negs in _group_negatives(splits["popular"]).items():
        assert negs == [c for c in POPULAR if c not in objects_of[image]][:3]
    # adversarial: each negative is the top co-occurring category (with its paired positive) still free
    for image, triples in _group_triples(splits["adversarial"]).items():
        used = set(objects_of[image])
        for positive, negative in triples:
            free = [c for c in CO_RANK[positive] if c not in used]
            if free:
                assert negative == free[0]
            used.add(negative)
    # same images and positives in every split
    positives = {s: [(i, p) for i, p, _ in _pairs(q)] for s, q in splits.items()}
    assert positives["random"] == positives["popular"] == positives["adversarial"]


def _group_triples(questions):
    grouped: dict[str, list[tuple[str, str]]] = {}
    for image, positive, negative in _pairs(questions):
        grouped.setdefault(image, []).append((positive, negative))
    return grouped


def _group_negatives(questions):
    return {image: [n for _, n in triples] for image, triples in _group_triples(questions).items()}


def test_builder_is_seeded(tmp_path):
    def files(seed, folder):
        splits = build_pope_splits(five_image_split(), num_images=4, seed=seed)
        return {
            s: write_pope_file(q, tmp_path / folder / f"coco_pope_{s}.json").read_bytes() for s, q in splits.items()
        }

    assert files(7, "a") == files(7, "b")
    assert files(7, "a") != files(8, "c")


def test_builder_needs_enough_images_and_known_splits():
    with pytest.raises(NotEnoughImagesError, match="6 images"):
        sample_pope_images(five_image_split(), num_images=6)
    with pytest.raises(UnknownPopeSplitError, match="'frequent'"):
        build_pope_splits(five_image_split(), num_images=5, strategies=["frequent"])


def test_question_text_article():
    assert question_text("dog") == "Is there a dog in the image?"
    assert question_text("orange") == "Is there an orange in the image?"


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="official POPE files not present")
@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_read_official_file(split):
    path = OFFICIAL / f"coco_pope_{split}.json"
    questions = read_pope_file(path)
    assert split_name_of(path) == split
    assert len(questions) == 3000 and sum(q.label == "yes" for q in questions) == 1500
    assert len({q.image for q in questions}) == 500
    first = questions[0]
    assert (first.question_id, first.image, first.label) == (1, "COCO_val2014_000000310196.jpg", "yes")
    assert first.object == "snowboard"
    assert all(q.object for q in questions)  # every text follows the template ("a"/"an")


def test_pope_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "maybe"}\n')
    with pytest.raises(PopeFormatError, match="bad.json:1"):
        read_pope_file(bad)
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "t", "label": "yes"}\n' * 2)
    with pytest.raises(PopeFormatError, match="appears twice"):
        read_pope_file(bad)
