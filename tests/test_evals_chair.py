"""CHAIR: singularising, finding object mentions, ground truth and the metrics on known captions."""

from __future__ import annotations

import numpy as np
import pytest
from evals_fixture import write_coco

from evals.chair.lemma import singularize
from evals.chair.mentions import find_mentions, mentioned_objects
from evals.chair.metrics import chair_metrics
from evals.chair.task import chair_task, ground_truth_objects, score_caption
from evals.chair.vocabulary import COCO_CATEGORY_NAMES, VocabularyError, build_phrase_table
from evals.coco import find_split, load_split
from evals.task import EvalItem


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("people", "person"), ("men", "man"), ("women", "woman"), ("children", "child"), ("mice", "mouse"),
        ("knives", "knife"), ("skis", "ski"), ("buses", "bus"), ("benches", "bench"), ("glasses", "glasses"),
        ("puppies", "puppy"), ("ties", "tie"), ("vases", "vase"), ("stoves", "stove"), ("policemen", "policeman"),
        ("sheep", "sheep"), ("scissors", "scissors"), ("bus", "bus"), ("tennis", "tennis"), ("dog", "dog"),
        ("sandwiches", "sandwich"), ("toothbrushes", "toothbrush"), ("boxes", "box"), ("tvs", "tv"),
    ],
)  # fmt: skip
def test_singularize(plural, singular):
    assert singularize(plural) == singular


def test_vocabulary_covers_coco_and_rejects_conflicts():
    assert len(COCO_CATEGORY_NAMES) == 80
    with pytest.raises(VocabularyError, match="names both"):
        build_phrase_table({"cup": ("mug",), "bowl": ("mug",)}, ())


def test_synonyms_and_multiword_objects_counted_once():
    caption = (
        "A man and two women sit at a dining table; the people eat hot dogs at the table "
        "while a teddy bear and a cell phone lie on a desk."
    )
    assert mentioned_objects(caption) == {"person", "dining table", "hot dog", "teddy bear", "cell phone"}
    words = [m.text for m in find_mentions(caption)]
    assert words == ["man", "women", "dining table", "people", "hot dogs", "table", "teddy bear", "cell phone", "desk"]


@pytest.mark.parametrize(
    ("caption", "objects"),
    [
        ("Mice, knives and people.", {"mouse", "knife", "person"}),
        ("A hot-dog stand.", {"hot dog"}),  # not a dog
        ("A baby elephant and its mother.", {"elephant", "person"}),  # "baby" describes; "mother" alone is a person
        ("A passenger train at the station.", {"train"}),
        ("A glass door and a glass vase; a glass of wine.", {"vase", "wine glass"}),
        ("A man in an orange shirt; oranges and apples.", {"person", "orange", "apple"}),
        ("A man wearing glasses beside two wine glasses.", {"person", "wine glass"}),
        ("Ski slopes with skiers and skis.", {"person", "skis"}),
        ("A flower bed by the bus stop.", set()),
        ("A computer mouse next to a laptop computer.", {"mouse", "laptop"}),
        ("", set()),
    ],
)
def test_mentions(caption, objects):
    assert mentioned_objects(caption) == objects


def _item(gt):
    return EvalItem("x", "all", "x.png", "x.png", "p", {"annotated_objects": sorted(gt), "reference_captions": []})


def test_known_captions_give_known_chair():
    cases = [
        # mentions person, frisbee, dog, cat; cat hallucinated; 12 words
        ({"person", "dog", "frisbee"}, "A man throws a frisbee to his dog while a cat watches."),
        # cup, dining table; nothing hallucinated; 2 of 3 ground-truth objects; 5 words
        ({"cup", "dining table", "chair"}, "Two cups on a table."),
        # bus hallucinated, car counted once; 1 of 3 ground-truth objects; 9 words
        ({"car", "person", "truck"}, "A red bus and a car and a car."),
    ]
    scores = [score_caption(_item(gt), caption) for gt, caption in cases]
    assert scores[0].details["hallucinated"] == ["cat"]
    m = {k: float(v) for k, v in chair_metrics(np.sum([s.counts for s in scores], axis=0)).items()}
    assert m == pytest.approx({"chair_s": 2 / 3, "chair_i": 2 / 8, "recall": 6 / 9, "length": 26 / 3})


def test_ground_truth_from_instances_and_captions(tmp_path):
    root = write_coco(tmp_path / "coco")
    split = load_split(find_split(root, "val2014"), with_captions=True)
    # bench: from a reference caption
    assert ground_truth_objects(split.objects[7], split.captions[7]) == {"bicycle", "person", "bench"}
    task = chair_task(split, lambda f: root / "val2014" / f, num_images=8, seed=0)
    item = next(i for i in task.items if i.item_id == "7")
    assert score_caption(item, "A man with a bicycle sits on a bench.").details["hallucinated"] == []
    assert task.config["ground_truth"] == "instances+captions"
    no_captions = load_split(find_split(root, "val2014"), with_captions=False)
    assert chair_task(no_captions, lambda f: root / f, num_images=8).config["ground_truth"] == "instances"
