"""VL-SAM (Lin et al., NeurIPS 2024, arXiv 2410.05963): the VLM's attention as prompts for SAM."""

from __future__ import annotations

from lvlm_guard.methods.vlsam.attention_maps import (
    FlowConfig,
    FlowTaps,
    aggregate_heads,
    attention_flow,
    head_weights,
    map_to_image,
)
from lvlm_guard.methods.vlsam.describe import DescribeConfig, Description, ObjectMention, describe, mention_spans
from lvlm_guard.methods.vlsam.detect import (
    EARLIER,
    Detection,
    DetectionResult,
    Observations,
    View,
    VLSamConfig,
    ablated,
    detect,
    nms,
    observe,
    refine,
    result_from,
    views,
)
from lvlm_guard.methods.vlsam.locate import (
    Located,
    attention_maps,
    attention_maps_for_flows,
    locate,
    located_from_map,
    segment,
    token_maps,
)
from lvlm_guard.methods.vlsam.prompts import (
    PointPrompt,
    PromptConfig,
    box_from_map,
    masked_points,
    region_points,
    sample_points,
)
from lvlm_guard.methods.vlsam.regions import label_regions, largest_region
from lvlm_guard.methods.vlsam.sam import MapSegmenter, Prediction, SamRunner, load_sam

__all__ = [
    "EARLIER",
    "DescribeConfig",
    "Description",
    "Detection",
    "DetectionResult",
    "MapSegmenter",
    "ObjectMention",
    "Observations",
    "PointPrompt",
    "Prediction",
    "VLSamConfig",
    "View",
    "ablated",
    "describe",
    "detect",
    "label_regions",
    "largest_region",
    "masked_points",
    "mention_spans",
    "nms",
    "observe",
    "refine",
    "region_points",
    "result_from",
    "token_maps",
    "views",
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
