"""Cross-check `evals.chair` against the official CHAIR code on real captions (a verification, not a test).

Needs a checkout of shikiw/OPERA (its `chair.py` is the nltk port of LisaAnne/Hallucination's
script, and its `log/chair_eval_results/*/greedy.jsonl` hold 500 real captions per LVLM). Imports
that `chair.py` as it is, builds its evaluator without COCO files (ground truth is drawn at random
here, the same for both sides), and compares, caption by caption, the object lists and word counts,
then the overall CHAIR_S / CHAIR_I / recall / length. Writes JSON.

    python scripts/check_chair_official.py --opera /path/to/OPERA --out results/chair_check/opera.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from evals.chair import caption_objects
from evals.chair.mentions import caption_words
from evals.chair.metrics import caption_counts, chair_metrics


def official_evaluator(opera: Path):
    spec = importlib.util.spec_from_file_location("official_chair", opera / "chair.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.CHAIR.get_annotations = lambda self: None  # no COCO files: ground truth is set below
    return module.CHAIR(str(opera))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opera", type=Path, required=True, help="checkout of shikiw/OPERA")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    evaluator = official_evaluator(args.opera)
    captions = []
    for path in sorted((args.opera / "log" / "chair_eval_results").glob("*/greedy.jsonl")):
        captions += [dict(json.loads(line), source=path.parent.name) for line in path.open()]
    if not captions:
        sys.exit(f"no log/chair_eval_results/*/greedy.jsonl under {args.opera}")
    rng = random.Random(args.seed)
    categories = sorted(set(evaluator.inverse_synonym_dict.values()) - {""})
    ground_truth = {c["image_id"]: set(rng.sample(categories, 6)) for c in captions}
    evaluator.imid_to_objects = ground_truth
    differing = []
    for c in captions:
        _, official_objects, _, official_words = evaluator.caption_to_words(c["caption"])
        ours, words = caption_objects(c["caption"]), caption_words(c["caption"])
        if official_objects != ours or len(official_words) != len(words):
            differing.append({"caption": c["caption"], "official": official_objects, "ours": ours})
    with tempfile.TemporaryDirectory() as tmp:
        caps_file = Path(tmp) / "caps.json"
        caps_file.write_text(json.dumps(captions))
        official = evaluator.compute_chair(str(caps_file), "image_id", "caption")["overall_metrics"]
    counts = np.sum(
        [caption_counts(caption_objects(c["caption"]), ground_truth[c["image_id"]], len(caption_words(c["caption"])))
         for c in captions],
        axis=0,
    )  # fmt: skip
    ours = {k: float(v) for k, v in chair_metrics(counts).items()}
    report = {
        "captions": len(captions),
        "sources": sorted({c["source"] for c in captions}),
        "captions_with_different_objects_or_length": len(differing),
        "examples": differing[:20],
        "official": {"chair_s": official["CHAIRs"], "chair_i": official["CHAIRi"], "recall": official["Recall"],
                     "length": official["Len"] * 100},
        "ours": ours,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=2))
    return 0 if not differing else 1


if __name__ == "__main__":
    raise SystemExit(main())
