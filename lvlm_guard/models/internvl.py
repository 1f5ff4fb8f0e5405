"""InternVL 2.5 / 3 (`InternVLForConditionalGeneration`, the transformers port): InternViT tower,
pixel-shuffle MLP projector, Qwen2 (or InternLM) decoder.

An image is cut into up to `max_patches` 448x448 tiles matching its aspect ratio plus a thumbnail
(dynamic high resolution); each tile gives `image_seq_length` (256) tokens after the 0.5 pixel
shuffle, and the processor writes the image as `<img>` + `<IMG_CONTEXT>` x (tiles x 256) + `</img>`
(Chen et al. 2024, "InternVL 2.5", Sec. 2.2; transformers `InternVLProcessor`).
"""

from __future__ import annotations

from lvlm_guard.models.base import ModelAdapter
from lvlm_guard.models.registry import register_adapter


@register_adapter
class InternVLAdapter(ModelAdapter):
    """Image tokens are the `<IMG_CONTEXT>` positions (`config.image_token_id`); an image's span is
    its run between `<img>` and `</img>` (the count varies with the tiles, so `tokens_per_image` is
    None). Users place images with `<image>` as in every family; the chat template renders them."""

    family = "internvl"
    architectures = ("InternVLForConditionalGeneration",)
    no_cls_attention = (
        "PAINT's CLS attention is not mapped for InternVL: the tower runs once per tile and drops its CLS"
        " token before the pixel shuffle, so no one CLS->patch map covers an image's tokens"
    )
    # transformers matches these from the start of the module path (or as its suffix)
    unquantized_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
