"""Build the world on disk as a real COCO-format dataset, and find it again.

Layout (what pycocotools and COCO tooling expect):

    <root>/manifest.json                    seed, version and size of every built split
    <root>/annotations/instances_<split>.json
    <root>/annotations/captions_<split>.json
    <root>/annotations/world_<split>.json   scene type, held-out companions, caption noise per image
    <root>/<split>/<image_id:012d>.jpg

Every image is drawn from its own seed (world seed, split, index), so a split is byte-identical for
the same seed on the same library versions, whatever the number of worker processes. Only the json
module is used here: the training machine has no pycocotools.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lvlm_guard.embedded.world.captions import captions_for
from lvlm_guard.embedded.world.categories import CATEGORIES, category
from lvlm_guard.embedded.world.errors import UnknownSplitError
from lvlm_guard.embedded.world.facts import ImageFacts, SeenObject
from lvlm_guard.embedded.world.mentions import NoiseConfig
from lvlm_guard.embedded.world.render import RenderConfig, render_scene
from lvlm_guard.embedded.world.scenes import SamplingConfig, sample_scene

#: bump when anything changes what a seed produces, so cached worlds are rebuilt
WORLD_VERSION = 1

#: split -> (code used in seeds and ids, default size, companion omission rate). The held-out
#: evaluation splits omit companions twice as often as train, so that co-occurrence-driven
#: hallucination has more chances to show (our choice; the rate is recorded in the manifest).
SPLITS: dict[str, tuple[int, int, float]] = {
    "train": (1, 20000, 0.15),
    "calib": (2, 500, 0.3),
    "test": (3, 500, 0.3),
}
CAPTIONS_PER_IMAGE = 5
JPEG_QUALITY = 92

_INFO = {
    "description": "lvlm_guard tiny COCO world: synthetic scenes with COCO categories",
    "url": "",
    "version": str(WORLD_VERSION),
    "year": 2026,
    "contributor": "lvlm_guard",
    "date_created": "2026-01-01",  # fixed, so files stay byte-identical across builds
}
_LICENSES = [
    {"id": 1, "name": "CC0 1.0 (synthetic images)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
]


def default_world_root() -> Path:
    """`$LVLM_GUARD_CACHE/tiny-coco-world`, else `~/.cache/lvlm_guard/tiny-coco-world`."""
    base = os.environ.get("LVLM_GUARD_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "lvlm_guard") / "tiny-coco-world"


def _split_info(split: str) -> tuple[int, int, float]:
    try:
        return SPLITS[split]
    except KeyError:
        raise UnknownSplitError(f"unknown split {split!r}; the world has {', '.join(SPLITS)}") from None


def image_id(split: str, index: int) -> int:
    """COCO ids unique across splits: the split's code times 10^7 plus the 1-based index."""
    return _split_info(split)[0] * 10**7 + index + 1


def read_manifest(root: Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return {"version": WORLD_VERSION, "splits": {}}
    return json.loads(path.read_text())


def _split_record(split: str, size: int, seed: int, render: RenderConfig) -> dict:
    return {
        "size": size,
        "seed": seed,
        "version": WORLD_VERSION,
        "companion_omission_rate": _split_info(split)[2],
        "image_size": render.size,
    }


def split_is_built(root: Path, split: str, size: int, seed: int = 0, render: RenderConfig | None = None) -> bool:
    """True when `root` holds this split for this size, seed and world version."""
    root, render = Path(root), render or RenderConfig()
    manifest = read_manifest(root)
    if manifest.get("splits", {}).get(split) != _split_record(split, size, seed, render):
        return False
    return all((root / "annotations" / f"{kind}_{split}.json").is_file() for kind in ("instances", "captions", "world"))


def ensure_world(
    split: str,
    root: str | Path | None = None,
    *,
    seed: int = 0,
    size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """The world root with `split` built, building it first if missing or stale; returns the root."""
    root = Path(root) if root is not None else default_world_root()
    size = _split_info(split)[1] if size is None else size
    if not split_is_built(root, split, size, seed):
        build_split(root, split, size, seed=seed, workers=workers, progress=progress)
    return root


def build_world(
    root: str | Path,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Build every split (default sizes from `SPLITS`), reusing splits already built; returns root."""
    sizes = {name: info[1] for name, info in SPLITS.items()} if sizes is None else dict(sizes)
    for split, size in sizes.items():
        ensure_world(split, root, seed=seed, size=size, workers=workers, progress=progress)
    return Path(root)


def build_split(
    root: str | Path,
    split: str,
    size: int,
    *,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    render: RenderConfig | None = None,
) -> None:
    """Render `size` images of `split` and write their COCO files, replacing any older copy."""
    root, render = Path(root), render or RenderConfig()
    _split_info(split)
    staging = root / f".staging-{split}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / split).mkdir(parents=True)
    (staging / "annotations").mkdir()
    chunk = 64
    jobs = [
        (str(staging / split), split, start, min(start + chunk, size), seed, render) for start in range(0, size, chunk)
    ]
    workers = workers or min(8, os.cpu_count() or 1)
    results = []
    with tqdm(total=size, desc=f"world {split}", unit="img", disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(_render_chunk(job))
                bar.update(job[3] - job[2])
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                for job, records in zip(jobs, pool.map(_render_chunk, jobs)):
                    results.append(records)
                    bar.update(job[3] - job[2])
    _write_annotations(staging / "annotations", split, [r for chunk_records in results for r in chunk_records])
    _publish(staging, root, split, _split_record(split, size, seed, render))


def _render_chunk(job) -> list[dict]:
    """Render images [start, end) of a split into `folder`; return their records (worker side)."""
    folder, split, start, end, seed, render = job
    code, _, omission = _split_info(split)
    sampling = SamplingConfig(companion_omission_rate=omission)
    records = []
    for index in range(start, end):
        scene = sample_scene(np.random.default_rng([seed, code, index]), sampling)
        rendered = render_scene(scene, render)
        iid = image_id(split, index)
        file_name = f"{iid:012d}.jpg"
        rendered.image.save(Path(folder) / file_name, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        objects = tuple(
            SeenObject(category(a.category_id).name, a.bbox, a.area, a.occluded) for a in rendered.annotations
        )
        facts = ImageFacts(iid, file_name, render.size, scene.scene_type, objects, scene.held_out)
        captions = captions_for(facts, np.random.default_rng([seed, code, index, 1]), CAPTIONS_PER_IMAGE, NoiseConfig())
        records.append(
            {
                "image": {"id": iid, "file_name": file_name, "width": render.size, "height": render.size},
                "annotations": [asdict(a) for a in rendered.annotations],
                "captions": [c.text for c in captions],
                "world": {
                    "image_id": iid,
                    "scene_type": scene.scene_type,
                    "held_out": list(scene.held_out),
                    "companion_checks": [[c, omitted] for c, omitted in scene.companion_checks],
                    "caption_hallucinations": [list(c.hallucinated) for c in captions],
                },
            }
        )
    return records


def _write_annotations(folder: Path, split: str, records: list[dict]) -> None:
    code = _split_info(split)[0]
    images = [{**r["image"], "license": 1, "coco_url": "", "flickr_url": "", "date_captured": ""} for r in records]
    categories = [{"supercategory": c.supercategory, "id": c.id, "name": c.name} for c in CATEGORIES]
    annotations, captions = [], []
    for r in records:
        iid = r["image"]["id"]
        for a in r["annotations"]:
            annotations.append(
                {
                    "id": code * 10**8 + len(annotations) + 1,
                    "image_id": iid,
                    "category_id": a["category_id"],
                    "bbox": list(a["bbox"]),
                    "area": a["area"],
                    "segmentation": [list(a["segmentation"])],
                    "iscrowd": 0,
                    "occluded": a["occluded"],
                    "visible_fraction": a["visible_fraction"],
                }
            )
        for text in r["captions"]:
            captions.append({"id": code * 10**8 + len(captions) + 1, "image_id": iid, "caption": text})
    head = {"info": _INFO, "licenses": _LICENSES, "images": images}
    _dump(folder / f"instances_{split}.json", {**head, "annotations": annotations, "categories": categories})
    _dump(folder / f"captions_{split}.json", {**head, "annotations": captions})
    _dump(folder / f"world_{split}.json", {"version": WORLD_VERSION, "images": [r["world"] for r in records]})


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")))


def _publish(staging: Path, root: Path, split: str, record: dict) -> None:
    """Move a finished split into place, then record it in the manifest (written last)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    _write_manifest(root, split, None)  # a half-moved split must not look built
    shutil.rmtree(root / split, ignore_errors=True)
    os.replace(staging / split, root / split)
    for path in (staging / "annotations").iterdir():
        os.replace(path, root / "annotations" / path.name)
    shutil.rmtree(staging, ignore_errors=True)
    _write_manifest(root, split, record)


def _write_manifest(root: Path, split: str, record: dict | None) -> None:
    manifest = read_manifest(root)
    manifest["version"] = WORLD_VERSION
    splits = manifest.setdefault("splits", {})
    if record is None:
        splits.pop(split, None)
    else:
        splits[split] = record
    tmp = root / f".manifest-{os.getpid()}.json"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, root / "manifest.json")
