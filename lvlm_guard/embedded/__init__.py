"""The embedded default: the synthetic COCO-format world (`world/`), the small LLaVA trained on it
(`tiny_model.py`, `tiny_data.py`, its checkpoints), the second-generation model's training code
(`organism/`) and the diagnostics of its internals. Nothing in the engine or the methods imports it."""

from __future__ import annotations

from pathlib import Path

#: the packaged checkpoints (tiny-coco, its exit router, organism v2 stage A)
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
