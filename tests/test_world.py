"""The synthetic COCO world: determinism, real COCO files, honest ground truth, configured noise."""

from __future__ import annotations

import io
import json
import re
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from lvlm_guard.embedded.world import (
    CATEGORIES,
    COCO_CATEGORIES,
    Conversation,
    SamplingConfig,
    UnknownCategoryError,
    UnknownSplitError,
    build_world,
    category,
    category_names,
    ensure_world,
    iter_conversations,
    render_scene,
    sample_scene,
)
from lvlm_guard.embedded.world.coco_format import read_manifest

SIZES = {"train": 80, "test": 12}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), seed=0, sizes=SIZES, workers=1, progress=False)


def _png(seed: int) -> bytes:
    rendered = render_scene(sample_scene(np.random.default_rng(seed)))
    buffer = io.BytesIO()
    rendered.image.save(buffer, "PNG")
    return buffer.getvalue()


def test_renderer_is_deterministic():
    assert _png(7) == _png(7)
    assert _png(7) != _png(8)


def test_same_seed_same_bytes_on_disk(world, tmp_path):
    again = build_world(tmp_path, seed=0, sizes={"test": SIZES["test"]}, workers=1, progress=False)
    for path in sorted((world / "test").iterdir()):
        assert path.read_bytes() == (again / "test" / path.name).read_bytes()
    for kind in ("instances", "captions", "world"):
        name = f"annotations/{kind}_test.json"
        assert (world / name).read_bytes() == (again / name).read_bytes()
    other = build_world(tmp_path / "other", seed=1, sizes={"test": 2}, workers=1, progress=False)
    first = sorted((other / "test").iterdir())[0]
    assert first.read_bytes() != (world / "test" / first.name).read_bytes()


def test_pycocotools_loads_the_files(world):
    coco_api = pytest.importorskip("pycocotools.coco")
    instances = coco_api.COCO(str(world / "annotations" / "instances_test.json"))
    captions = coco_api.COCO(str(world / "annotations" / "captions_test.json"))
    assert len(instances.getImgIds()) == SIZES["test"]
    assert instances.getAnnIds()
    for image_id in instances.getImgIds():
        assert len(captions.getAnnIds(imgIds=image_id)) >= 5
        info = instances.loadImgs(image_id)[0]
        assert (world / "test" / info["file_name"]).is_file()
        for ann in instances.loadAnns(instances.getAnnIds(imgIds=image_id)):
            mask = instances.annToMask(ann)  # polygons decode into a mask of the image's size
            assert mask.shape == (info["height"], info["width"]) and mask.any()


def test_every_annotation_lies_inside_its_image(world):
    data = json.loads((world / "annotations" / "instances_train.json").read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    assert data["annotations"]
    for ann in data["annotations"]:
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
        polygon = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert (polygon >= 0).all() and (polygon[:, 0] <= width).all() and (polygon[:, 1] <= height).all()
        assert 0 < ann["area"] <= w * h + 1 and ann["iscrowd"] == 0


def test_categories_are_cocos_own(world):
    coco = {cid: (name, sup) for cid, name, sup in COCO_CATEGORIES}
    assert len(coco) == 80 and len(CATEGORIES) >= 24
    expected = {"person": 1, "bicycle": 2, "car": 3, "bus": 6, "cat": 17, "dog": 18, "bottle": 44, "cup": 47}
    expected |= {"fork": 48, "knife": 49, "spoon": 50, "bowl": 51, "pizza": 59, "cake": 61, "chair": 62}
    expected |= {"couch": 63, "dining table": 67, "tv": 72, "laptop": 73, "mouse": 74, "keyboard": 76}
    expected |= {"cell phone": 77, "book": 84, "clock": 85}
    for name, cid in expected.items():
        assert category(name).id == cid and coco[cid][0] == name
    written = json.loads((world / "annotations" / "instances_test.json").read_text())["categories"]
    for entry in written:
        assert coco[entry["id"]] == (entry["name"], entry["supercategory"])
    with pytest.raises(UnknownCategoryError, match="zebra"):
        category("zebra")


def _object_of(question: str) -> str:
    found = [n for n in category_names() if re.search(rf"\b(a|an) {re.escape(n)}\b", question)]
    return max(found, key=len)


def test_existence_negatives_are_never_in_the_image(world):
    data = json.loads((world / "annotations" / "instances_train.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    truth: dict[str, set[str]] = {}
    files = {img["id"]: f"train/{img['file_name']}" for img in data["images"]}
    for ann in data["annotations"]:
        truth.setdefault(files[ann["image_id"]], set()).add(names[ann["category_id"]])
    yes = no = 0
    for conv in iter_conversations(world, "train", kinds=("existence",)):
        for question, answer in conv.turns:
            name = _object_of(question)
            present = name in truth.get(conv.image_file, set())
            assert answer.startswith("Yes") == present, (conv.image_file, question, answer)
            yes, no = yes + present, no + (not present)
    assert yes > 0 and abs(yes - no) <= 0.1 * (yes + no) + 2  # balanced


@pytest.mark.parametrize("rate", [0.15, 0.5])
def test_companion_omission_happens_at_the_configured_rate(rate):
    config = SamplingConfig(companion_omission_rate=rate)
    checks, held = 0, 0
    for i in range(1500):
        scene = sample_scene(np.random.default_rng([42, i]), config)
        present = {o.name for o in scene.objects}
        for companion, omitted in scene.companion_checks:
            checks += 1
            held += omitted
            if omitted:
                assert companion not in present
        assert set(scene.held_out) == {c for c, omitted in scene.companion_checks if omitted}
    assert checks > 1000
    assert abs(held / checks - rate) < 0.035


def test_captions_name_absent_companions_sometimes(world):
    records = json.loads((world / "annotations" / "world_train.json").read_text())["images"]
    flags = [bool(h) for r in records for h in r["caption_hallucinations"]]
    assert len(flags) >= 5 * SIZES["train"]
    assert 0.04 < sum(flags) / len(flags) < 0.25  # configured at 12% per caption


def test_built_splits_are_reused_and_rebuilt_when_stale(world, tmp_path):
    root = ensure_world("test", tmp_path, size=3, workers=1, progress=False)
    stamp = (root / "annotations" / "instances_test.json").stat().st_mtime_ns
    ensure_world("test", root, size=3, workers=1, progress=False)
    assert (root / "annotations" / "instances_test.json").stat().st_mtime_ns == stamp
    ensure_world("test", root, size=3, seed=5, workers=1, progress=False)
    assert read_manifest(root)["splits"]["test"]["seed"] == 5
    with pytest.raises(UnknownSplitError):
        ensure_world("val", root)


def test_conversations_are_deterministic_and_frozen(world):
    first = list(iter_conversations(world, "test", seed=3))
    assert first == list(iter_conversations(world, "test", seed=3))
    assert {c.kind for c in first} == {"detail", "caption", "existence", "objects"}
    assert all(isinstance(c, Conversation) and c.image_file.startswith("test/") for c in first)
    with pytest.raises(FrozenInstanceError):
        first[0].image_file = "x"  # type: ignore[misc]


def test_box_proposals_never_cross_their_bounds_for_oversized_objects():
    """A surface object wider than its table top, an airborne one taller than the sky band, an
    object wider than the image: each draw stays a valid interval (the sampler used to raise
    `high - low < 0` for rare draws, which killed a training data worker)."""
    import numpy as np

    from lvlm_guard.embedded.world import scenes
    from lvlm_guard.embedded.world.categories import category_names

    rng = np.random.default_rng(0)
    stype = scenes.SCENE_TYPES[0]
    for name in category_names():
        for shrink in (1.0, 3.0, 6.0):  # shrink > 1 grows the object
            for surface in (None, (0.4, 0.5, 0.05, 0.1)):
                x, y, w, h = scenes._propose_box(rng, name, stype, surface, shrink)
                assert np.isfinite([x, y, w, h]).all() and w > 0 and h > 0
