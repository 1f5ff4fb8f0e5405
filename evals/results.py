"""What a finished run reports: metrics with intervals per group, and how it was produced.

The results JSON holds everything needed to trust or redo a number: the exact configuration,
model id and guard, seed, library versions and git commit, item counts and timing.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.bootstrap import MetricEstimate

VERSIONED_PACKAGES: tuple[str, ...] = (
    "lvlm_guard", "torch", "transformers", "accelerate", "numpy", "pillow", "tqdm", "bitsandbytes",
)  # fmt: skip


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one task run under one configuration."""

    task: str
    name: str
    metrics: Mapping[str, Mapping[str, MetricEstimate]]  # group -> metric -> estimate
    counts: Mapping[str, Mapping[str, float]]  # group -> count name -> sum
    n_items: Mapping[str, int]  # group -> items
    metric_names: tuple[str, ...]
    percent_metrics: frozenset[str]
    out_dir: Path
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "name": self.name,
            "metrics": {g: {m: est.as_dict() for m, est in ms.items()} for g, ms in self.metrics.items()},
            "counts": {g: dict(c) for g, c in self.counts.items()},
            "n_items": dict(self.n_items),
            "confidence": self.confidence,
        }


def _git_commit(repo: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def environment_versions() -> dict[str, Any]:
    """Python, platform, package versions, git commit, and the GPU when torch is already loaded."""
    versions: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["git"] = _git_commit(Path(__file__).resolve().parents[1])
    torch = sys.modules.get("torch")  # never import it just to report
    if torch is not None:
        versions["cuda"] = getattr(torch.version, "cuda", None)
        if torch.cuda.is_available():
            versions["gpu"] = torch.cuda.get_device_name(0)
    return versions


def write_json(data: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
