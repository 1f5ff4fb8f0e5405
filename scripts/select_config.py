"""Pick each method's setting on the calibration split, by one stated rule, for the test-split run.

Rule: the lowest `CHAIR_I (%) + (100 - POPE adversarial F1 (%))`, i.e. the fewest invented objects in
captions plus the most errors on the hardest POPE split, both on the calibration split. Ties keep the
first (the published default comes first in the grid). Prints `family=spec` lines and writes JSON.

    python scripts/select_config.py runs/calib --families var vhr --out runs/calib/selected.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def scores(calib: Path) -> dict[str, float]:
    pope = {c["name"]: c["metrics"] for c in json.loads((calib / "pope" / "grid.json").read_text())["configurations"]}
    chair = {c["name"]: c["metrics"] for c in json.loads((calib / "chair" / "grid.json").read_text())["configurations"]}
    return {
        name: 100 * chair[name]["all"]["chair_i"]["value"] + 100 * (1 - pope[name]["adversarial"]["f1"]["value"])
        for name in pope
        if name in chair
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calib", type=Path, help="folder with pope/ and chair/ grid runs on the calibration split")
    parser.add_argument("--families", nargs="+", required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    by_name = scores(args.calib)
    chosen = {}
    for family in args.families:
        candidates = [name for name in by_name if name.split(":")[0] == family]
        if not candidates:
            raise SystemExit(f"no calibration run of {family!r} in {args.calib}")
        chosen[family] = min(candidates, key=lambda name: by_name[name])
        print(f"{family}={chosen[family]}")
    if args.out:
        args.out.write_text(
            json.dumps({"rule": "min CHAIR_I + (100 - adversarial F1)", "scores": by_name, "chosen": chosen}, indent=1)
        )


if __name__ == "__main__":
    main()
