"""Gemma 3 (`Gemma3ForConditionalGeneration`): SigLIP tower, average-pooled projector, Gemma 3 decoder.

Each image becomes `mm_tokens_per_image` (256) soft tokens, the SigLIP patches average-pooled to a
16x16 grid; the processor turns each `<start_of_image>` into `\\n\\n<start_of_image>` +
`<image_soft_token>` x 256 + `<end_of_image>\\n\\n` (Gemma Team 2025, "Gemma 3 Technical Report",
Sec. 2.1; transformers `Gemma3Processor.full_image_sequence`). The decoder interleaves sliding-window
and global layers and attends bidirectionally among one image's tokens (`token_type_ids`); the
guard's edits act on scores after the family's own mask, so both stay as the model builds them.
"""

from __future__ import annotations

import torch

from lvlm_guard.models.base import ModelAdapter
from lvlm_guard.models.idefics3 import Idefics3Adapter
from lvlm_guard.models.registry import register_adapter


@register_adapter
class Gemma3Adapter(ModelAdapter):
    """Image tokens are the `<image_soft_token>` positions (`config.image_token_id`), a fixed
    `mm_tokens_per_image` per image; `<start_of_image>`/`<end_of_image>` around them are not image
    tokens and keep adjacent images apart."""

    family = "gemma3"
    architectures = ("Gemma3ForConditionalGeneration",)
    no_cls_attention = (
        "its SigLIP tower has no CLS token (patches only, average-pooled into image tokens), so PAINT's"
        " CLS->patch attention does not exist here"
    )
    # transformers matches these from the start of the module path (or as its suffix)
    unquantized_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")

    def tokens_per_image(self, input_ids: torch.Tensor) -> int | None:
        return int(self.model.config.mm_tokens_per_image)

    # one list of images per prompt, no special tokens where the template starts with BOS: as Idefics3
    processor_inputs = Idefics3Adapter.processor_inputs
