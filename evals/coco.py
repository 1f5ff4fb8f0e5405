"""Reading COCO-format splits: images, object categories per image and reference captions.

POPE (Li et al., EMNLP 2023, Sec. 4.1) takes its ground-truth objects from COCO's instance
annotations; CHAIR (Rohrbach et al., EMNLP 2018, Sec. 3) takes them from the instance
annotations *and* the reference captions. Both only need "which categories does image i show",
so this module reduces a COCO file to exactly that, with plain `json` (no pycocotools index).

Layout: images live in `<root>/<split>/<file_name>` (real COCO: `val2014/COCO_val2014_*.jpg`).
Annotation files are looked for in the places COCO and our synthetic world put them (see
`INSTANCES_CANDIDATES`), or given explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from evals.errors import CaptionsMismatchError, CocoFormatError, CocoLayoutError

#: where the instances file of split `s` may be, relative to the COCO root, in order of preference
INSTANCES_CANDIDATES: tuple[str, ...] = (
    "annotations/instances_{split}.json",  # real COCO download
    "instances_{split}.json",
    "{split}/instances.json",
)
#: likewise for reference captions (only CHAIR needs them)
CAPTIONS_CANDIDATES: tuple[str, ...] = (
    "annotations/captions_{split}.json",
    "captions_{split}.json",
    "{split}/captions.json",
)


@dataclass(frozen=True)
class CocoFiles:
    """Where one split's images and annotation files are."""

    image_dir: Path
    instances: Path | None
    captions: Path | None

    def image_path(self, file_name: str) -> Path:
        return self.image_dir / file_name


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    file_name: str


@dataclass(frozen=True)
class CocoSplit:
    """The parts of a COCO-format split that hallucination metrics use.

    `objects[image_id]` are the distinct category names annotated in that image, sorted by name so
    that everything built from them is independent of annotation order. `captions` is empty when
    no captions file was read.
    """

    images: tuple[CocoImage, ...]
    categories: Mapping[int, str]
    objects: Mapping[int, tuple[str, ...]]
    captions: Mapping[int, tuple[str, ...]]

    def category_names(self) -> tuple[str, ...]:
        return tuple(self.categories[cid] for cid in sorted(self.categories))


def _first_existing(root: Path, split: str, candidates: tuple[str, ...]) -> Path | None:
    for pattern in candidates:
        path = root / pattern.format(split=split)
        if path.is_file():
            return path
    return None


def find_split(
    root: str | Path,
    split: str,
    *,
    instances: str | Path | None = None,
    captions: str | Path | None = None,
    need_instances: bool = True,
) -> CocoFiles:
    """Resolve a split's image folder and annotation files under a COCO root.

    Explicit `instances` / `captions` paths win over the searched candidates. A missing captions
    file is not an error here (CHAIR records whether it had one); missing instances is, when
    `need_instances`.
    """
    root = Path(root)
    image_dir = root / split
    if not image_dir.is_dir():
        raise CocoLayoutError(f"image folder {image_dir} does not exist (expected <coco-root>/<split>/)")
    if instances is not None:
        instances_path: Path | None = Path(instances)
        if not instances_path.is_file():
            raise CocoLayoutError(f"instances file {instances_path} does not exist")
    else:
        instances_path = _first_existing(root, split, INSTANCES_CANDIDATES)
        if instances_path is None and need_instances:
            tried = ", ".join(str(root / p.format(split=split)) for p in INSTANCES_CANDIDATES)
            raise CocoLayoutError(f"no instances file for split {split!r}; tried {tried}")
    if captions is not None:
        captions_path: Path | None = Path(captions)
        if not captions_path.is_file():
            raise CocoLayoutError(f"captions file {captions_path} does not exist")
    else:
        captions_path = _first_existing(root, split, CAPTIONS_CANDIDATES)
    return CocoFiles(image_dir=image_dir, instances=instances_path, captions=captions_path)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: expected a JSON object at top level")
    return data


def _need(data: dict, key: str, path: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise CocoFormatError(f"{path}: missing list {key!r}")
    return value


def read_instances(path: str | Path) -> tuple[tuple[CocoImage, ...], dict[int, str], dict[int, tuple[str, ...]]]:
    """Images (file order), categories (id -> name) and distinct category names per image id."""
    path = Path(path)
    data = _read_json(path)
    try:
        images = tuple(CocoImage(int(im["id"]), str(im["file_name"])) for im in _need(data, "images", path))
        categories = {int(c["id"]): str(c["name"]) for c in _need(data, "categories", path)}
    except (KeyError, TypeError, ValueError) as err:
        raise CocoFormatError(f"{path}: image or category entry without id/file_name/name ({err})") from err
    known = {im.image_id for im in images}
    found: dict[int, set[str]] = {im.image_id: set() for im in images}
    for ann in _need(data, "annotations", path):
        try:
            image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
        except (KeyError, TypeError, ValueError) as err:
            raise CocoFormatError(f"{path}: annotation without image_id/category_id: {ann!r}") from err
        if image_id not in known:
            raise CocoFormatError(f"{path}: annotation {ann.get('id')} names unknown image_id {image_id}")
        if category_id not in categories:
            raise CocoFormatError(f"{path}: annotation {ann.get('id')} names unknown category_id {category_id}")
        found[image_id].add(categories[category_id])
    objects = {image_id: tuple(sorted(names)) for image_id, names in found.items()}
    return images, categories, objects


def read_captions(path: str | Path) -> dict[int, tuple[str, ...]]:
    """Reference captions per image id, in file order."""
    path = Path(path)
    data = _read_json(path)
    captions: dict[int, list[str]] = {}
    for ann in _need(data, "annotations", path):
        try:
            captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]))
        except (KeyError, TypeError, ValueError) as err:
            raise CocoFormatError(f"{path}: caption annotation without image_id/caption: {ann!r}") from err
    return {image_id: tuple(texts) for image_id, texts in captions.items()}


def check_captions_cover(captions: Mapping[int, tuple[str, ...]], images, path: str | Path) -> None:
    """Every image of the split has reference captions in `path` (else they belong to other images)."""
    missing = sorted({image.image_id for image in images} - set(captions))
    if missing:
        share = f"{len(missing)} of {len(images)}"
        raise CaptionsMismatchError(
            f"{path}: no reference captions for {share} images of the split (e.g. image ids {missing[:5]}); "
            "is it the captions file of another split?"
        )


def load_split(files: CocoFiles, *, with_captions: bool = False) -> CocoSplit:
    """Read a split's instances (and, for CHAIR, captions) into a `CocoSplit`."""
    if files.instances is None:
        raise CocoLayoutError(f"no instances file known for images in {files.image_dir}")
    images, categories, objects = read_instances(files.instances)
    captions: dict[int, tuple[str, ...]] = {}
    if with_captions:
        if files.captions is None:
            tried = ", ".join(p.format(split=files.image_dir.name) for p in CAPTIONS_CANDIDATES)
            raise CocoLayoutError(
                f"no captions file for the images in {files.image_dir} (tried {tried} under the COCO root); "
                "pass --captions, or --ground-truth instances to use the instance annotations alone"
            )
        captions = read_captions(files.captions)
        check_captions_cover(captions, images, files.captions)
    return CocoSplit(images=images, categories=categories, objects=objects, captions=captions)
