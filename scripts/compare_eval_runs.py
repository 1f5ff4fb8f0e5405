"""Do two eval runs agree item by item? (e.g. one GPU vs `accelerate launch` on two)

Compares the merged `records.jsonl` of each configuration folder present in both runs: same item ids
in the same order, same outputs; and the metrics of `results.json`. Prints and writes a JSON summary.

    python scripts/compare_eval_runs.py runs/one_gpu/pope runs/two_gpu/pope --out compare.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_config(a: Path, b: Path) -> dict:
    ra, rb = read_records(a / "records.jsonl"), read_records(b / "records.jsonl")
    same_order = [r["id"] for r in ra] == [r["id"] for r in rb]
    by_id = {r["id"]: r["output"] for r in rb}
    differing = [r["id"] for r in ra if by_id.get(r["id"]) != r["output"]]
    ma = json.loads((a / "results.json").read_text())
    mb = json.loads((b / "results.json").read_text())
    return {
        "items": [len(ra), len(rb)],
        "same_ids_in_same_order": same_order,
        "differing_outputs": len(differing),
        "first_differing_ids": differing[:10],
        "metrics_equal": ma["metrics"] == mb["metrics"],
        "items_per_second": [ma["timing"].get("items_per_second"), mb["timing"].get("items_per_second")],
        "num_processes": [ma["config"].get("num_processes"), mb["config"].get("num_processes")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configs = sorted(p.name for p in args.run_a.iterdir() if (p / "records.jsonl").exists())
    summary = {c: compare_config(args.run_a / c, args.run_b / c) for c in configs if (args.run_b / c).exists()}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
