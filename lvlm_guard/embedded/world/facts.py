"""What is known about one image, read back from the world's JSON files (no pycocotools needed).

Captions, descriptions and questions are all generated from these facts, so they can be generated
again later, for any split and seed, without rendering anything.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class SeenObject:
    """One annotated (visible) object."""

    name: str
    bbox: tuple[float, float, float, float]
    area: float
    occluded: bool


@dataclass(frozen=True)
class ImageFacts:
    """Ground truth of one image plus the scene bookkeeping the world keeps beside COCO's files."""

    image_id: int
    file_name: str  # relative to the split's image folder
    size: int
    scene_type: str
    objects: tuple[SeenObject, ...]
    held_out: tuple[str, ...] = ()

    @cached_property
    def present(self) -> frozenset[str]:
        return frozenset(o.name for o in self.objects)

    def groups(self) -> list[tuple[str, int, SeenObject]]:
        """(name, count, largest instance) per category, most salient (largest) first."""
        by_name: dict[str, list[SeenObject]] = defaultdict(list)
        for obj in self.objects:
            by_name[obj.name].append(obj)
        groups = [(name, len(objs), max(objs, key=lambda o: o.area)) for name, objs in by_name.items()]
        return sorted(groups, key=lambda g: (-g[2].area, g[0]))


def facts_from_files(instances_path: Path, world_path: Path | None = None) -> list[ImageFacts]:
    """Facts for every image of an `instances_<split>.json`, with the `world_<split>.json` sidecar."""
    instances = json.loads(Path(instances_path).read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    per_image: dict[int, list[SeenObject]] = defaultdict(list)
    for ann in instances["annotations"]:
        per_image[ann["image_id"]].append(
            SeenObject(
                names[ann["category_id"]], tuple(ann["bbox"]), float(ann["area"]), bool(ann.get("occluded", False))
            )
        )
    extra = {}
    if world_path is not None and Path(world_path).is_file():
        extra = {rec["image_id"]: rec for rec in json.loads(Path(world_path).read_text())["images"]}
    facts = []
    for img in instances["images"]:
        rec = extra.get(img["id"], {})
        facts.append(
            ImageFacts(
                img["id"],
                img["file_name"],
                int(img["width"]),
                rec.get("scene_type", ""),
                tuple(per_image[img["id"]]),
                tuple(rec.get("held_out", ())),
            )
        )
    return facts
