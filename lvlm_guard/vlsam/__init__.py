"""VL-SAM (Lin et al., NeurIPS 2024, arXiv 2410.05963): the VLM's attention as prompts for SAM."""

from __future__ import annotations

from lvlm_guard.vlsam.attention_maps import (
    FlowConfig,
    FlowTaps,
    aggregate_heads,
    attention_flow,
    head_weights,
    map_to_image,
)
from lvlm_guard.vlsam.locate import (
    Located,
    attention_maps,
    attention_maps_for_flows,
    locate,
    located_from_map,
    segment,
)
from lvlm_guard.vlsam.prompts import PromptConfig, box_from_map, sample_points
from lvlm_guard.vlsam.sam import SamRunner, load_sam

__all__ = [
    "FlowConfig",
    "FlowTaps",
    "Located",
    "PromptConfig",
    "SamRunner",
    "aggregate_heads",
    "attention_flow",
    "attention_maps",
    "attention_maps_for_flows",
    "box_from_map",
    "head_weights",
    "load_sam",
    "locate",
    "located_from_map",
    "map_to_image",
    "sample_points",
    "segment",
]
