"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): CLIP tower, MLP projector, anyres tiling.

Each image becomes its base tile's features, then the unpadded high-resolution grid with one
`image_newline` vector closing every row (Liu et al. 2024, "LLaVA-NeXT"; transformers
`LlavaNextProcessor._get_number_of_features`). The processor expands one `<image>` into that
many `<image>` tokens, so the count varies with the image's size and aspect ratio.
"""

from __future__ import annotations

from lvlm_guard.models.base import ModelAdapter
from lvlm_guard.models.registry import register_adapter


@register_adapter
class LlavaNextAdapter(ModelAdapter):
    """Image tokens are every `<image>` position, the image_newline slots included.

    The newline slots hold a learned vector rather than a patch, but they sit inside the image's
    token run and the model places them with the patches, so they count as image tokens.
    `tokens_per_image` is None (anyres); an image's span is one contiguous run of image tokens.
    Runs of two images never touch: the family's chat templates end every `<image>` with a
    newline token ("[INST] <image>\\n<image>\\n...", "USER: <image>\\n..."), and a text-token gap
    between runs is what tells images apart, since the ids alone do not say where one anyres
    layout ends. Padding is never an image token, so spans are padding-aware as they are.
    """

    family = "llava_next"
    architectures = ("LlavaNextForConditionalGeneration",)
    no_cls_attention = (
        "PAINT's CLS attention is not mapped for anyres inputs: the tower runs once per tile and an"
        " image's tokens are its base tile, then the unpadded grid with newline slots; only LLaVA-1.5's"
        " one-pass layout (576 patches per image) is what the official code handles"
    )
    # transformers matches these from the start of the module path (or as its suffix)
    unquantized_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
