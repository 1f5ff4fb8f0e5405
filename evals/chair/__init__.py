"""CHAIR (Rohrbach et al., EMNLP 2018) as the original script computes it; see `mentions` and `metrics`."""

from evals.chair.mentions import Mention, caption_objects, find_mentions

__all__ = ["Mention", "caption_objects", "find_mentions"]
