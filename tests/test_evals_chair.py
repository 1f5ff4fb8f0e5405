"""CHAIR: singularising, finding object mentions, ground truth and the metrics on known captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from evals_fixture import write_coco

from evals.chair import caption_objects, find_mentions
from evals.chair.metrics import chair_metrics
from evals.chair.nlp import NltkDataError
from evals.chair.task import chair_task, ground_truth_objects, score_caption
from evals.chair.vocabulary import extended_vocabulary, original_vocabulary, vocabulary
from evals.coco import find_split, load_split
from evals.errors import CaptionsMismatchError, CocoLayoutError, UnknownVocabularyError
from evals.task import EvalItem


@pytest.mark.parametrize(
    ("caption", "objects"),
    [
        # plurals through WordNet lemmas; "people" is a person; every mention is listed
        ("Mice, knives and people.", ["mouse", "knife", "person"]),
        ("Two dogs chase a dog and a puppy.", ["dog", "dog", "dog"]),
        # double words are joined after lemmatizing: "hot dogs" -> hot dog, not a dog
        ("A man eats hot dogs beside a teddy bear.", ["person", "hot dog", "teddy bear"]),
        # "hot-dog" stays one token that is in no list
        ("A hot-dog stand.", []),
        # "baby"/"adult" + animal is the animal (the original has "baby" and "adult" as person words)
        ("A baby elephant, an adult giraffe and a baby.", ["elephant", "giraffe", "person"]),
        # "passenger" + jet/train is the vehicle; a passenger alone is a person
        ("A passenger train and a passenger on a bench.", ["train", "person", "bench"]),
        # "bow tie" is a tie; "toilet seat" a toilet; with toilet and seat both present every seat is dropped
        ("A man in a bow tie fixes a toilet seat.", ["person", "tie", "toilet"]),
        ("The seat of the toilet is up.", ["toilet"]),
        ("A seat by the window.", ["chair"]),
        # no rule for colours: "orange" is the fruit every time, as in the original
        ("A man in an orange shirt holds two oranges.", ["person", "orange", "orange"]),
        # "skis", "skiing" (verb, lemma "ski") and "ski" all count as skis
        ("Skiers skiing on skis.", ["person", "skis", "skis"]),
        # the original's list has " motor bike" with a stray space: "motor bike" never matches
        ("A motor bike, a motor cycle and a motorbike.", ["motorcycle", "motorcycle"]),
        ("A table, a dining table and a desk.", ["dining table", "dining table", "dining table"]),
        ("", []),
    ],
)
def test_caption_objects_as_the_original_finds_them(caption, objects):
    assert caption_objects(caption) == objects


def test_mentions_keep_word_and_position():
    mentions = find_mentions("Two baby birds near a hot dog.")
    assert [(m.text, m.category, m.position) for m in mentions] == [("bird", "bird", 1), ("hot dog", "hot dog", 4)]


def test_original_vocabulary_is_the_synonym_file():
    vocab = original_vocabulary()
    assert len(vocab.categories) == 80
    assert vocab.synonyms["puppy"] == "dog" and vocab.synonyms["bow"] == "tie"
    assert "mug" not in vocab.synonyms  # ours only
    assert extended_vocabulary().synonyms["mug"] == "cup"
    assert caption_objects("A mug of tea.") == [] and caption_objects("A mug of tea.", extended_vocabulary()) == ["cup"]
    # a word the original maps keeps the original's category in the extension
    assert all(extended_vocabulary().synonyms[w] == c for w, c in vocab.synonyms.items())
    with pytest.raises(UnknownVocabularyError, match="ours"):
        vocabulary("ours")


def test_missing_nltk_data_is_named(monkeypatch, tmp_path):
    import nltk

    from evals.chair import nlp

    nlp._pipeline.cache_clear()
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    try:
        with pytest.raises(NltkDataError, match=r"wordnet.*python -m nltk.downloader"):
            caption_objects("A dog.")
    finally:
        nlp._pipeline.cache_clear()


def _item(gt):
    return EvalItem("x", "all", "x.png", "x.png", "p", {"annotated_objects": sorted(gt), "reference_captions": []})


def test_known_captions_give_known_chair():
    cases = [
        # mentions person, frisbee, dog, cat; cat hallucinated; 13 words (the final "." is one)
        ({"person", "dog", "frisbee"}, "A man throws a frisbee to his dog while a cat watches."),
        # cup, dining table; nothing hallucinated; 2 of 3 ground-truth objects; 6 words
        ({"cup", "dining table", "chair"}, "Two cups on a table."),
        # bus once and car twice, all three mentions hallucinated; 0 of 2 ground-truth objects; 10 words
        ({"person", "truck"}, "A red bus and a car and a car."),
    ]
    scores = [score_caption(_item(gt), caption) for gt, caption in cases]
    assert scores[0].details["hallucinated"] == ["cat"]
    assert scores[2].details["mentions"] == ["bus", "car", "car"]
    m = {k: float(v) for k, v in chair_metrics(np.sum([s.counts for s in scores], axis=0)).items()}
    # CHAIR_I counts every mention: 1 + 0 + 3 hallucinated of 4 + 2 + 3 (once per caption it would be 3/8)
    assert m == pytest.approx({"chair_s": 2 / 3, "chair_i": 4 / 9, "recall": 5 / 8, "length": 29 / 3})


def test_ground_truth_from_instances_and_captions(tmp_path):
    root = write_coco(tmp_path / "coco")
    split = load_split(find_split(root, "val2014"), with_captions=True)
    # bench: from a reference caption
    assert ground_truth_objects(split.objects[7], split.captions[7]) == {"bicycle", "person", "bench"}
    task = chair_task(split, lambda f: root / "val2014" / f, num_images=8, seed=0)
    item = next(i for i in task.items if i.item_id == "7")
    assert score_caption(item, "A man with a bicycle sits on a bench.").details["hallucinated"] == []
    assert task.config["ground_truth"] == "instances+captions"
    assert task.scoring == {"vocabulary": "original", "chair_i": "every mention"}
    assert sorted(task.config["image_ids"]) == sorted(int(i.item_id) for i in task.items)
    only_instances = chair_task(split, lambda f: root / f, num_images=8, ground_truth="instances")
    item = next(i for i in only_instances.items if i.item_id == "7")
    assert score_caption(item, "A man with a bicycle sits on a bench.").details["hallucinated"] == ["bench"]
    assert only_instances.config["ground_truth"] == "instances"
    no_captions = load_split(find_split(root, "val2014"), with_captions=False)
    with pytest.raises(CocoLayoutError, match="--ground-truth instances"):
        chair_task(no_captions, lambda f: root / f, num_images=8)


def test_captions_must_describe_the_split(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(CocoLayoutError, match="no captions file"):
        load_split(find_split(root, "val2014"), with_captions=True)
    other = tmp_path / "captions_train2014.json"
    other.write_text(json.dumps({"annotations": [{"image_id": 999, "caption": "A dog."}]}))
    with pytest.raises(CaptionsMismatchError, match="captions_train2014.json.*8 of 8 images"):
        load_split(find_split(root, "val2014", captions=other), with_captions=True)
