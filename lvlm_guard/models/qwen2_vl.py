"""Qwen2-VL and Qwen2.5-VL: a ViT with 2x2 patch merger (in `model.visual`), Qwen2 decoder.

Dynamic resolution: an image of H x W pixels (rounded to multiples of patch_size x merge_size)
gives H*W / (patch_size * merge_size)^2 tokens; the chat template wraps each image as
`<|vision_start|><|image_pad|><|vision_end|>` and the processor expands `<|image_pad|>` to that
count (Wang et al. 2024, "Qwen2-VL", Sec. 2.1; transformers `Qwen2VLProcessor`).
The decoder uses M-RoPE: positions of image tokens are (t, h, w) grid coordinates, built by
the model from `image_grid_thw` and `mm_token_type_ids`. The guard never touches positions:
its edits act on attention scores after RoPE, so nothing here depends on M-RoPE.
"""

from __future__ import annotations

from lvlm_guard.models.base import ModelAdapter
from lvlm_guard.models.registry import register_adapter


@register_adapter
class Qwen2VLAdapter(ModelAdapter):
    """Image tokens are the `<|image_pad|>` positions (`config.image_token_id`).

    An image's span is its run of `<|image_pad|>` tokens, without the `<|vision_start|>` and
    `<|vision_end|>` around it; those delimiters keep the runs of adjacent images apart.
    Video tokens (`<|video_pad|>`) are not image tokens. The decoder (`model.language_model`)
    has GQA heads; `model.visual` holds the vision tower and the merger, which bitsandbytes
    must leave in full precision. Users place images with `<image>` like in every family;
    the chat template turns each into the vision block.
    """

    family = "qwen2_vl"
    no_cls_attention = (
        "its ViT has no CLS token (patches only, merged 2x2 into image tokens), so PAINT's"
        " CLS->patch attention does not exist here"
    )
    architectures = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    # transformers matches these from the start of the module path (or as its suffix)
    unquantized_modules = ("model.visual", "lm_head")
