"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP tower, MLP projector, Qwen2 decoder.

Like LLaVA-NeXT, an image is its base tile's features then the unpadded anyres grid with one
`image_newline` per row, pooled down when it exceeds `vision_aspect_ratio` (anyres_max_9)
(Li et al. 2024, "LLaVA-OneVision", Sec. 3; transformers `LlavaOnevisionProcessor._get_number_of_features`);
the processor expands each `<image>` to that many `<image>` tokens.
"""

from __future__ import annotations

from lvlm_guard.models.llava_next import LlavaNextAdapter
from lvlm_guard.models.registry import register_adapter


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """Image tokens are every `<image>` position (newline slots included), one contiguous run per
    image; the family's chat template closes every image with a newline token, which keeps runs of
    adjacent images apart (as in LLaVA-NeXT)."""

    family = "llava_onevision"
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    no_cls_attention = (
        "its SigLIP tower has no CLS token (patches only) and its anyres layout runs the tower once per"
        " tile, so PAINT's CLS->patch attention does not exist here"
    )
