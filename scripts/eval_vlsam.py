"""VL-SAM on the embedded model's world: pointing accuracy, box IoU and recall, full system vs ablations.

`--mode detect` (default): the VL-SAM system of `lvlm_guard.methods.vlsam.detect` (words from the model's own
descriptions, connected-region prompts, refinement, multi-scale, question ensemble, NMS) against our
earlier configuration (`EARLIER`: templated GT words, map peak, map box) and the full system minus one
part at a time. The VLM runs once per image (every view and question of the full system, plus the
templated words of the earlier configuration), cached under `--cache`; every configuration is then
post-processed from the same observations (`Observations.select`). Segmenter: `MapSegmenter` (no SAM
weights here), so "refinement" and masks are the stand-in's, not SAM's.

- pointing: the final positive point of the category (`final_points`, on its merged map) inside a GT
  box (or the GT polygon mask) of that category; a category the model never said counts as a miss.
- box IoU: the category's best-scored detection vs its best-matching GT box (0 if none).
- recall@0.5: GT instances with a detection of their category at IoU >= 0.5 (AR50-style);
  precision@0.5: detections matched one-to-one (greedy by score) to a GT instance at IoU >= 0.5.
Thresholds (`VLSamConfig.threshold`, `MapSegmenter.threshold`) are chosen on calib by box IoU.

    python scripts/eval_vlsam.py --mode detect --split calib --num-images 12 --out results/vlsam
    python scripts/eval_vlsam.py --mode detect --split test --num-images 40 --out results/vlsam

`--mode flows`: the earlier flow-variant study below.

For every (image, category present) pair of the split, the category's name is teacher-forced in
"There is a <name> in the image." and its attention map computed (`Guard.locate`).
- pointing: does the map's peak fall inside a ground-truth box of that category;
- box IoU: the box of the map's hot region (>= threshold * max) vs the best-matching GT box.
Baselines: centre of image (point at the centre; a centred box of the calib split's mean GT box
size), and uniform attention (a map with no information: chance pointing = the fraction of the
image the category's boxes cover; the box is the whole image). 95% bootstrap CIs over images.

Flow variants are named `base[+modifier...]` (see `variant`); all variants of a run come from one
forward per pair. `--variants grid` runs the calibration grid; the best by pointing is printed.

    python scripts/eval_vlsam.py --split calib --num-images 40 --variants grid --figure 0 --out results/vlsam
    python scripts/eval_vlsam.py --split test --num-images 40 --variants <best>,paper,sum-raw --out results/vlsam
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lvlm_guard as lg
from lvlm_guard.embedded.world.coco_format import ensure_world
from lvlm_guard.methods.vlsam import FlowConfig, PromptConfig, attention_maps_for_flows, located_from_map
from lvlm_guard.methods.vlsam.locate import DEFAULT_ANSWER

BASES = {
    "paper": {},  # paper Eq. 1-3: mean-max heads, column-regularized (I + A)(I + R)
    "sum": {"combine": "sum", "renormalize": True},  # word's attention summed over layers, no flow
    "sum-raw": {"combine": "sum", "regularize": False},  # same, no regularization, no re-normalization
}
MODIFIERS = {
    "noreg": {"regularize": False},
    "uniform": {"head_weighting": "uniform"},
    "image": {"image_only": True},
    "norm": {"renormalize": True},
}
GRID_BASES = ["paper", "rollout0", "rollout0.5", "rollout0.9", "sum", "sum-raw"]
GRID_WINDOWS = ["", "+L0-4", "+L2-8", "+L4-8"]
GRID = [b + i + w for b in GRID_BASES for i in ("", "+image") for w in GRID_WINDOWS] + [
    "paper+noreg",
    "paper+uniform",
    "paper+norm",
    "rollout0.5+noreg",
]


def variant(name: str) -> FlowConfig:
    """`paper`, `rollout<r>` (residual r, rows re-normalized), `sum`, `sum-raw`, then `+noreg`,
    `+uniform`, `+image`, `+norm`, `+L<start>-<end>` (layer window)."""
    base, *mods = name.split("+")
    if base.startswith("rollout"):
        kwargs = {"combine": "rollout", "residual": float(base[len("rollout") :]), "renormalize": True}
    elif base in BASES:
        kwargs = dict(BASES[base])
    else:
        raise SystemExit(f"unknown flow base {base!r} in {name!r}")
    for mod in mods:
        if mod.startswith("L"):
            start, end = mod[1:].split("-")
            kwargs.update(start_layer=int(start), end_layer=int(end))
        elif mod in MODIFIERS:
            kwargs.update(MODIFIERS[mod])
        else:
            raise SystemExit(f"unknown flow modifier {mod!r} in {name!r}")
    return FlowConfig(**kwargs)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def xyxy(bbox) -> tuple[float, float, float, float]:
    x, y, w, h = bbox
    return x, y, x + w, y + h


def inside(point, box) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def covered_fraction(boxes, width: int, height: int) -> float:
    grid = np.zeros((height, width), dtype=bool)
    for b in boxes:
        grid[int(b[1]) : int(np.ceil(b[3])), int(b[0]) : int(np.ceil(b[2]))] = True
    return float(grid.mean())


def instances(root: Path, split: str) -> tuple[dict, dict, dict]:
    data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    boxes: dict[int, dict[str, list]] = {}
    for ann in data["annotations"]:
        boxes.setdefault(ann["image_id"], {}).setdefault(names[ann["category_id"]], []).append(xyxy(ann["bbox"]))
    return images, boxes, names


def bootstrap(per_image: list[list[float]], seed: int = 0, reps: int = 1000) -> dict:
    flat_mean = float(np.mean([v for row in per_image for v in row]))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(reps):
        pick = rng.integers(0, len(per_image), len(per_image))
        stats.append(np.mean([v for i in pick for v in per_image[i]]))
    return {"mean": flat_mean, "ci95": [float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("detect", "flows"), default="detect")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lvlm_guard" / "vlsam_observations")
    ap.add_argument(
        "--thresholds", default=None, help="detect on test: prompt,segmenter thresholds (else from calib JSON)"
    )
    ap.add_argument("--split", default="test")
    ap.add_argument("--num-images", type=int, default=200)
    ap.add_argument("--model", default="tiny-coco")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--variants", default="paper", help="comma list of variant names (see `variant`), or grid")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--box-threshold", type=float, default=PromptConfig().box_threshold)
    ap.add_argument("--figure", type=int, default=8, help="images shown in the figure (0: none)")
    ap.add_argument("--figure-variants", type=int, default=1, help="one figure for each of the first N variants")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.mode == "detect":
        return detect_main(args)

    root = ensure_world(args.split, progress=False)
    images, boxes, _ = instances(root, args.split)
    calib_root = ensure_world("calib", progress=False)
    _, calib_boxes, _ = instances(calib_root, "calib")
    sizes = [(b[2] - b[0], b[3] - b[1]) for per in calib_boxes.values() for bs in per.values() for b in bs]
    mean_w, mean_h = (float(v) for v in np.mean(sizes, axis=0))

    model, processor = lg.load(args.model, dtype=args.dtype, device_map=args.device)
    guard = lg.attach(model, processor, [])
    ids = sorted(boxes)[: args.num_images]
    variants = GRID if args.variants == "grid" else args.variants.split(",")
    flows = [variant(v) for v in variants]
    prompts = PromptConfig(box_threshold=args.box_threshold)
    other = f"{variants[0]}, another word's map"  # control: is the map about the word, or just salient?
    rows = {k: {"pointing": [], "iou": []} for k in [*variants, other, "centre", "uniform"]}
    shown: dict[str, list] = {v: [] for v in variants[: args.figure_variants if args.figure else 0]}
    figure_ids = set(ids[: args.figure])
    start = time.time()
    for image_id in ids:
        info = images[image_id]
        image = Image.open(root / args.split / info["file_name"]).convert("RGB")
        w, h = info["width"], info["height"]
        centre = (w / 2, h / 2)
        centre_box = (centre[0] - mean_w / 2, centre[1] - mean_h / 2, centre[0] + mean_w / 2, centre[1] + mean_h / 2)
        per = {k: {"pointing": [], "iou": []} for k in rows}
        first_found = []
        for name, gt in sorted(boxes[image_id].items()):
            maps = attention_maps_for_flows(guard, image, DEFAULT_ANSWER.format(word=name), [name], flows)
            for vname, per_flow in zip(variants, maps):
                found = located_from_map(name, per_flow[name], prompts)
                if vname == variants[0]:
                    first_found.append(found)
                per[vname]["pointing"].append(float(any(inside(found.point, b) for b in gt)))
                per[vname]["iou"].append(max(iou(found.box, b) for b in gt))
                if image_id in figure_ids and vname in shown and not any(s[0] == image_id for s in shown[vname]):
                    shown[vname].append((image_id, name, found.heatmap.numpy(), found.point, found.box, gt))
            per["centre"]["pointing"].append(float(any(inside(centre, b) for b in gt)))
            per["centre"]["iou"].append(max(iou(centre_box, b) for b in gt))
            per["uniform"]["pointing"].append(covered_fraction(gt, w, h))
            per["uniform"]["iou"].append(max(iou((0, 0, w, h), b) for b in gt))
        gts = [gt for _, gt in sorted(boxes[image_id].items())]
        if len(gts) > 1:  # the next category's map scored against this category's boxes
            for k, gt in enumerate(gts):
                found = first_found[(k + 1) % len(gts)]
                per[other]["pointing"].append(float(any(inside(found.point, b) for b in gt)))
                per[other]["iou"].append(max(iou(found.box, b) for b in gt))
        for k in rows:
            for m in ("pointing", "iou"):
                rows[k][m].append(per[k][m])
    seconds = time.time() - start
    result = {
        "split": args.split,
        "images": len(ids),
        "pairs": sum(len(r) for r in rows["centre"]["pointing"]),
        "pairs_other_word": sum(len(r) for r in rows[other]["pointing"]),
        "model": args.model,
        "device": args.device,
        "box_threshold": args.box_threshold,
        "seconds": round(seconds, 1),
        "command": "python scripts/eval_vlsam.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "flows": {v: repr(f) for v, f in zip(variants, flows)},
        "results": {k: {m: bootstrap(v[m]) for m in ("pointing", "iou")} for k, v in rows.items()},
    }
    first = rows[variants[0]]
    result["paired_vs_first"] = {
        v: {
            m: bootstrap([[a - b for a, b in zip(r, f)] for r, f in zip(rows[v][m], first[m])])
            for m in ("pointing", "iou")
        }
        for v in [*variants[1:], other]  # `other`: only images with 2+ categories (zip stops there)
    }
    ranked = sorted(
        variants, key=lambda v: (-result["results"][v]["pointing"]["mean"], -result["results"][v]["iou"]["mean"])
    )
    result["best_by_pointing"] = ranked[0]
    (args.out / f"vlsam_{args.split}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"| map | pointing acc. (95% CI) | box IoU (95% CI) |  ({result['pairs']} pairs, {len(ids)} images)",
        "|---|---|---|",
    ]
    for k in [*ranked, other, "centre", "uniform"]:
        p, i = result["results"][k]["pointing"], result["results"][k]["iou"]
        lines.append(
            f"| {k} | {p['mean']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] "
            f"| {i['mean']:.3f} [{i['ci95'][0]:.3f}, {i['ci95'][1]:.3f}] |"
        )
    lines.append("")
    lines.append(f"| map | pointing minus {variants[0]} (95% CI, paired) | box IoU minus {variants[0]} |")
    lines.append("|---|---|---|")
    for v, d in result["paired_vs_first"].items():
        p, i = d["pointing"], d["iou"]
        lines.append(
            f"| {v} | {p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] "
            f"| {i['mean']:+.3f} [{i['ci95'][0]:+.3f}, {i['ci95'][1]:+.3f}] |"
        )
    print("\n".join(lines))
    print(f"best by pointing: {ranked[0]}  ({seconds:.0f} s)")
    (args.out / f"vlsam_{args.split}_table.md").write_text("\n".join(lines) + "\n")
    for k, (vname, items) in enumerate(shown.items()):
        suffix = "" if k == 0 else "_" + vname.replace("+", "_")
        path = args.out / f"vlsam_{args.split}_maps{suffix}.png"
        figure(items, root / args.split, images, path, f"VL-SAM maps, {vname}")


def figure(shown, folder: Path, images: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(2, (len(shown) + 1) // 2, figsize=(3 * ((len(shown) + 1) // 2), 6.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_id, name, heat, point, box, gt) in zip(axes.flat, shown):
        ax.imshow(Image.open(folder / images[image_id]["file_name"]).convert("RGB"))
        ax.imshow(heat, cmap="jet", alpha=0.45)
        for b in gt:
            ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="lime", lw=1.5))
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="white", ls="--", lw=1))
        ax.plot(*point, "w*", ms=10)
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"{title} (green: GT boxes, star: peak, dashed: map box)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# --- mode detect -------------------------------------------------------------------------------

PARTS = ("connected_region", "refinement", "multi_scale", "ensemble", "nms")
GRID_PROMPT = (0.3, 0.5, 0.7)
GRID_SEGMENTER = (0.3, 0.5, 0.7)


def gt_instances(root: Path, split: str):
    """images, {image_id: {category: [(box xyxy, polygon)]}}."""
    data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    gt: dict[int, dict[str, list]] = {}
    for ann in data["annotations"]:
        gt.setdefault(ann["image_id"], {}).setdefault(names[ann["category_id"]], []).append(
            (xyxy(ann["bbox"]), ann["segmentation"][0])
        )
    return images, gt


def polygon_mask(polygon, width: int, height: int) -> np.ndarray:
    from PIL import ImageDraw

    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(polygon[i], polygon[i + 1]) for i in range(0, len(polygon), 2)], fill=1)
    return np.array(canvas, dtype=bool)


def score_image(result, gt: dict[str, list], width: int, height: int, iou_at: float = 0.5) -> dict[str, list[float]]:
    """Per-pair and per-instance scores of one image's `DetectionResult` (see the module docstring)."""
    from lvlm_guard.methods.vlsam.detect import box_iou

    out = {k: [] for k in ("pointing", "pointing_mask", "mentioned", "iou", "recall50")}
    by_cat: dict[str, list] = {}
    for d in result.detections:  # already best score first
        by_cat.setdefault(d.category, []).append(d)
    for cat, items in sorted(gt.items()):
        point = result.points.get(cat)
        boxes = [b for b, _ in items]
        out["mentioned"].append(float(cat in result.maps))
        out["pointing"].append(float(point is not None and any(inside(point, b) for b in boxes)))
        hit = point is not None and any(polygon_mask(p, width, height)[point[1], point[0]] for _, p in items)
        out["pointing_mask"].append(float(hit))
        dets = by_cat.get(cat, [])
        out["iou"].append(max((box_iou(dets[0].box, b) for b in boxes), default=0.0) if dets else 0.0)
        for b in boxes:
            out["recall50"].append(float(any(box_iou(d.box, b) >= iou_at for d in dets)))
    matched = 0
    for cat, dets in by_cat.items():
        free = [b for b, _ in gt.get(cat, [])]
        for d in dets:
            ious = [box_iou(d.box, b) for b in free]
            if ious and max(ious) >= iou_at:
                free.pop(int(np.argmax(ious)))
                matched += 1
    out["precision50"] = [float(matched), float(len(result.detections))]  # summed over images
    out["detections"] = [float(len(result.detections))]
    out["hallucinated"] = [float(sum(d.category not in gt for d in result.detections))]
    return out


def observations_for(guard, image, image_id: int, split: str, categories, cache: Path):
    """The full system's observations and the earlier configuration's, cached per image."""
    import pickle

    from lvlm_guard.methods.vlsam import EARLIER, VLSamConfig, observe

    path = cache / split / f"{image_id}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    full = observe(guard, image, VLSamConfig())
    earlier = observe(guard, image, EARLIER, categories=categories)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps((full, earlier)))
    return full, earlier


def configurations(prompt_t: float, seg_t: float):
    """name -> (VLSamConfig, segmenter, which observations)."""
    from lvlm_guard.methods.vlsam import EARLIER, MapSegmenter, VLSamConfig, ablated

    full = VLSamConfig(threshold=prompt_t)
    seg = MapSegmenter(seg_t)
    out = {"earlier (before)": (EARLIER, MapSegmenter(0.5, relative_to="max", connected=False), "earlier")}
    out["full"] = (full, seg, "full")
    for part in PARTS:
        out[f"full - {part}"] = (ablated(full, part), seg, "full")
    return out


def aggregate(per_image: list[dict]) -> dict:
    res = {}
    for m in ("pointing", "pointing_mask", "mentioned", "iou", "recall50"):
        res[m] = bootstrap([p[m] for p in per_image])
    tp = sum(p["precision50"][0] for p in per_image)
    n = sum(p["precision50"][1] for p in per_image)
    res["precision50"] = tp / n if n else 0.0
    res["detections_per_image"] = float(np.mean([p["detections"][0] for p in per_image]))
    res["hallucinated_per_image"] = float(np.mean([p["hallucinated"][0] for p in per_image]))
    return res


def detect_main(args) -> None:
    from tqdm import tqdm

    from lvlm_guard.methods.vlsam import result_from

    root = ensure_world(args.split, progress=False)
    images, gt = gt_instances(root, args.split)
    model, processor = lg.load(args.model, dtype=args.dtype, device_map=args.device)
    guard = lg.attach(model, processor, [])
    ids = sorted(gt)[: args.num_images]
    calib = args.split == "calib"
    if args.thresholds:
        grid = [tuple(float(v) for v in args.thresholds.split(","))]
    elif calib:
        grid = [(p, s) for p in GRID_PROMPT for s in GRID_SEGMENTER]
    else:
        chosen = json.loads((args.out / "vlsam_detect_calib.json").read_text())["chosen"]
        grid = [(chosen["prompt_threshold"], chosen["segmenter_threshold"])]
    scores: dict[str, list] = {}
    start = time.time()
    for image_id in tqdm(ids, desc=f"VL-SAM {args.split}", unit="image"):
        info = images[image_id]
        image = Image.open(root / args.split / info["file_name"]).convert("RGB")
        w, h = info["width"], info["height"]
        obs = dict(
            zip(
                ("full", "earlier"),
                observations_for(guard, image, image_id, args.split, sorted(gt[image_id]), args.cache),
            )
        )
        for p_t, s_t in grid:
            confs = configurations(p_t, s_t)
            if calib:
                confs = {"full": confs["full"]}
            for name, (cfg, seg, source) in confs.items():
                key = f"{name} @ {p_t},{s_t}" if calib else name
                result = result_from(obs[source], image, seg, cfg)
                scores.setdefault(key, []).append(score_image(result, gt[image_id], w, h))
    seconds = time.time() - start
    results = {k: aggregate(v) for k, v in scores.items()}
    out = {
        "split": args.split,
        "images": len(ids),
        "pairs": sum(len(p["pointing"]) for p in next(iter(scores.values()))),
        "instances": sum(len(p["recall50"]) for p in next(iter(scores.values()))),
        "segmenter": "MapSegmenter (offline stand-in for SAM; no SAM weights here)",
        "seconds": round(seconds, 1),
        "command": "python scripts/eval_vlsam.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "results": results,
    }
    if calib:
        best = max(results, key=lambda k: (results[k]["iou"]["mean"], results[k]["pointing"]["mean"]))
        p_t, s_t = (float(v) for v in best.split("@ ")[1].split(","))
        out["chosen"] = {"prompt_threshold": p_t, "segmenter_threshold": s_t, "by": "box IoU, then pointing"}
    else:
        base = scores["full"]
        out["paired_vs_full"] = {
            k: {
                m: bootstrap([[a - b for a, b in zip(r[m], f[m])] for r, f in zip(v, base)])
                for m in ("pointing", "iou", "recall50")
            }
            for k, v in scores.items()
            if k != "full"
        }
        out["thresholds"] = {"prompt_threshold": grid[0][0], "segmenter_threshold": grid[0][1]}
    (args.out / f"vlsam_detect_{args.split}.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"{args.split}: {len(ids)} images, {out['pairs']} (image, category) pairs, {out['instances']} GT instances; "
        "segmenter: MapSegmenter (no SAM)",
        "",
        "| configuration | pointing (box) | pointing (mask) | category said | box IoU | recall@0.5 | precision@0.5 | detections/image |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(r):
        return f"{r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"

    for k, r in results.items():
        lines.append(
            f"| {k} | {cell(r['pointing'])} | {cell(r['pointing_mask'])} | {r['mentioned']['mean']:.3f} | {cell(r['iou'])} "
            f"| {cell(r['recall50'])} | {r['precision50']:.3f} | {r['detections_per_image']:.1f} |"
        )
    if not calib:
        lines += ["", "| minus full (paired, 95% CI) | pointing (box) | box IoU | recall@0.5 |", "|---|---|---|---|"]
        for k, d in out["paired_vs_full"].items():
            lines.append(
                f"| {k} | "
                + " | ".join(
                    f"{d[m]['mean']:+.3f} [{d[m]['ci95'][0]:+.3f}, {d[m]['ci95'][1]:+.3f}]"
                    for m in ("pointing", "iou", "recall50")
                )
                + " |"
            )
    else:
        lines += ["", f"chosen: {out['chosen']}"]
    text = "\n".join(lines)
    print(text)
    print(f"({seconds:.0f} s)")
    (args.out / f"vlsam_detect_{args.split}_table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
