"""LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP tower, MLP projector, Llama/Vicuna decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lvlm_guard.errors import ClsAttentionUnavailableError, InputMismatchError
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

    # --- vision tower: CLS attention (PAINT) --------------------------------------------------
    def _clip_encoder(self) -> nn.Module:
        """The CLIP vision transformer (`CLIPVisionModel`, or its inner `vision_model` where the
        installed transformers nests one); raises where the tower is not CLIP (no CLS token)."""
        tower = self.model.model.vision_tower
        inner = getattr(tower, "vision_model", tower)
        if not hasattr(getattr(inner, "embeddings", None), "class_embedding"):
            raise ClsAttentionUnavailableError(
                f"llava: the vision tower {type(tower).__name__} has no CLS token (no class_embedding);"
                " PAINT reads CLIP's CLS->patch attention"
            )
        return inner

    def cls_attention_modules(self, vit_layers: Sequence[int]) -> list[nn.Module]:
        layers = self._clip_encoder().encoder.layers
        bad = [i for i in vit_layers if not -len(layers) <= i < len(layers)]
        if bad:
            raise ClsAttentionUnavailableError(
                f"llava: vision layers {bad} do not exist; the tower has layers 0..{len(layers) - 1}"
            )
        return [layers[i].self_attn for i in vit_layers]

    def cls_query_key(self, module: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """CLIPAttention: `q_proj`/`k_proj` on the layer-normed input, split into heads (what its
        forward computes before the attention function)."""
        n, tokens, _ = hidden.shape
        heads, head_dim = module.num_heads, module.head_dim
        query = module.q_proj(hidden[:, :1]).view(n, 1, heads, head_dim).transpose(1, 2)
        key = module.k_proj(hidden).view(n, tokens, heads, head_dim).transpose(1, 2)
        return query, key, float(module.scale)

    def patch_values_at_image_tokens(self, values: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """The projector keeps the tower's patch order and the model fills the image tokens row by
        row with the images in order (`masked_scatter`), so image i's patch j is the j-th token of
        its run; with the 'full' strategy the run starts with the CLS token (value 0)."""
        n_images, patches = values.shape
        per_image = self.tokens_per_image(image_tokens)
        if per_image == patches + 1:
            values = torch.cat([values.new_zeros(n_images, 1), values], dim=1)
        count = int(image_tokens.sum())
        if values.numel() != count:
            raise InputMismatchError(
                f"llava: {n_images} image(s) of {values.shape[1]} tokens do not fill the {count} image tokens"
            )
        out = torch.zeros(image_tokens.shape, dtype=torch.float32, device=image_tokens.device)
        out[image_tokens] = values.reshape(-1).to(device=out.device, dtype=torch.float32)
        return out
