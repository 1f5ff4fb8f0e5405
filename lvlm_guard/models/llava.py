"""LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP tower, MLP projector, Llama/Vicuna decoder."""

from __future__ import annotations

import torch

from lvlm_guard.models.base import ModelAdapter
from lvlm_guard.models.registry import register_adapter


@register_adapter
class LlavaAdapter(ModelAdapter):
    family = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    # transformers matches these from the start of the module path (or as its suffix)
    unquantized_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")

    def tokens_per_image(self, input_ids: torch.Tensor) -> int | None:
        """(image_size / patch_size)^2, plus CLS when the 'full' feature strategy keeps it."""
        vision = self.model.config.vision_config
        per_side = vision.image_size // vision.patch_size
        extra = 1 if self.model.config.vision_feature_select_strategy == "full" else 0
        return per_side * per_side + extra
