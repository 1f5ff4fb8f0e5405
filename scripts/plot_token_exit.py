"""Plot POPE F1 / CHAIR vs visual-token exit layer from `scripts/eval_token_exit.sh` outputs.

Reads `<out>/{pope,chair}/*/results.json` (one per guard spec) and writes
`<out>/token_exit_quality.png` and `<out>/token_exit_quality.json`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def exit_layer(name: str, num_layers: int) -> float | None:
    """x position of a guard spec: `exit:layer=L` -> L, `none` -> the last layer (no exit)."""
    if name == "none":
        return float(num_layers - 1)
    found = re.fullmatch(r"exit:layer=(\d+)", name)
    return float(found.group(1)) if found else None


def collect(folder: Path) -> dict[str, dict]:
    runs = {}
    for path in sorted(folder.glob("*/results.json")):
        data = json.loads(path.read_text())
        runs[data["name"]] = data["metrics"]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--num-layers", type=int, required=True)
    args = parser.parse_args()
    out = Path(args.out)
    pope, chair = collect(out / "pope"), collect(out / "chair")
    table: dict[str, dict] = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for split in sorted({s for m in pope.values() for s in m}):
        points = sorted(
            (exit_layer(n, args.num_layers), m[split]["f1"]["value"] * 100)
            for n, m in pope.items()
            if exit_layer(n, args.num_layers) is not None and split in m
        )
        if points:
            axes[0].plot(*zip(*points), marker="o", label=f"POPE {split} F1")
        for name, metrics in pope.items():
            table.setdefault(name, {})[f"pope_{split}_f1"] = metrics.get(split, {}).get("f1", {}).get("value")
        if "exit:router=tiny-coco" in pope and split in pope["exit:router=tiny-coco"]:
            axes[0].axhline(pope["exit:router=tiny-coco"][split]["f1"]["value"] * 100, ls=":", lw=1)
    for key in ("chair_s", "chair_i", "recall"):  # recall: the share of real objects the caption names
        points = sorted(
            (exit_layer(n, args.num_layers), m["all"][key]["value"] * 100)
            for n, m in chair.items()
            if exit_layer(n, args.num_layers) is not None
        )
        if points:
            axes[1].plot(*zip(*points), marker="o", label="object recall" if key == "recall" else key.upper())
        for name, metrics in chair.items():
            table.setdefault(name, {})[key] = metrics["all"][key]["value"]
        if "exit:router=tiny-coco" in chair:
            axes[1].axhline(chair["exit:router=tiny-coco"]["all"][key]["value"] * 100, ls=":", lw=1)
    for ax, title in zip(axes, ("POPE (test split)", "CHAIR (test split)")):
        ax.set_xlabel("exit after layer (rightmost = no exit; dotted = learned router)")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "token_exit_quality.png", dpi=120)
    (out / "token_exit_quality.json").write_text(json.dumps(table, indent=2))
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
