"""Stages B-D of issue 18: the CLIP-style vision tower, its contrastive partner, and the LLaVA.

The LLaVA is LLaVA-1.5's layout (Liu et al. 2023, "Improved Baselines", Sec. 3.1) built from stock
transformers classes, so every code path that serves a real LLaVA serves this one: a CLIP ViT whose
second-to-last layer's patch features (CLS dropped) go through a 2-layer GELU MLP projector into the
stage-A LLaMA. Stage B trains the ViT contrastively (CLIP, Radford et al. 2021, Sec. 2.3) against a
small text encoder of its own (`TextEncoder`), which is thrown away afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from lvlm_guard.embedded.tiny_model import CHAT_TEMPLATE as V1_CHAT_TEMPLATE
from lvlm_guard.embedded.tiny_model import IMAGE, TinyLlavaSpec, build_image_processor

#: LLaVA-1.5's system prompt (haotian-liu/LLaVA, conversation.py, conv_vicuna_v1), "human" as there
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

#: v1's conversation format ("USER: <image>\n... ASSISTANT: ...</s>") with LLaVA-1.5's habit of a
#: system prompt first: the default one when the messages bring none, so that every prompt built
#: through `apply_chat_template` looks like the training data.
CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}{{ \"" + SYSTEM_PROMPT + " \" }}{%- endif -%}"
    + V1_CHAT_TEMPLATE
)


@dataclass(frozen=True)
class VisionSpec:
    """The ViT and stage B's text encoder. Defaults: v1's tower (6 x 256, patch 16 at 224 px = 196
    image tokens, 3.9 M parameters, ~4 MB in int8: what the 64 MiB tree has room for beside the
    17.8 M LM); the text encoder is ours (4 x 256, causal like CLIP's, 96 tokens: a 100-word
    description is cut as CLIP cuts at 77)."""

    image_size: int = 224
    patch_size: int = 16
    hidden: int = 256
    layers: int = 6
    heads: int = 4
    intermediate: int = 768
    embed_dim: int = 256  # the contrastive space
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 768
    text_positions: int = 96

    @classmethod
    def for_tests(cls) -> VisionSpec:
        return cls(image_size=32, patch_size=8, hidden=32, layers=3, heads=2, intermediate=64, embed_dim=32,
                   text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64, text_positions=96)  # fmt: skip

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def vision_config(spec: VisionSpec) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=spec.hidden, intermediate_size=spec.intermediate, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, image_size=spec.image_size, patch_size=spec.patch_size,
        projection_dim=spec.embed_dim, hidden_act="gelu",
    )  # fmt: skip


class TextEncoder(torch.nn.Module):
    """CLIP's text tower, pooled at each sequence's last real token (its `</s>`).

    Pooling is done here: `CLIPTextTransformer` pools at argmax(input_ids) when eos id is 2 (the
    original CLIP vocabulary's convention), which is wrong for this tokenizer.
    """

    def __init__(self, spec: VisionSpec, vocab_size: int, pad_id: int):
        super().__init__()
        config = CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
            max_position_embeddings=spec.text_positions, projection_dim=spec.embed_dim, hidden_act="gelu",
            pad_token_id=pad_id, eos_token_id=2, bos_token_id=1,
        )  # fmt: skip
        self.model = CLIPTextModel(config)
        self.pad_id = pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [b, t], right-padded
        mask = (ids != self.pad_id).long()
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [b, t, d]
        last = mask.sum(1).clamp_min(1) - 1
        return hidden[torch.arange(ids.shape[0], device=ids.device), last]


class ContrastivePair(torch.nn.Module):
    """The ViT (kept) and the text encoder (dropped after stage B), CLIP's symmetric InfoNCE."""

    def __init__(self, spec: VisionSpec, vocab_size: int, pad_id: int):
        super().__init__()
        self.vision = CLIPVisionModel(vision_config(spec))
        self.text = TextEncoder(spec, vocab_size, pad_id)
        self.image_proj = torch.nn.Linear(spec.hidden, spec.embed_dim, bias=False)
        self.text_proj = torch.nn.Linear(spec.text_hidden, spec.embed_dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.6592))  # log(1/0.07), CLIP's init

    def loss(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.image_proj(self.vision(pixel_values=pixels).pooler_output), dim=-1)
        text = F.normalize(self.text_proj(self.text(ids)), dim=-1)
        logits = self.logit_scale.clamp(max=4.6052).exp() * image @ text.T  # [b, b]; CLIP clips at 100
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.T.float(), target))


def llava_config(lm_config: LlamaConfig, spec: VisionSpec, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    """LLaVA-1.5's layout on the stage-A LLaMA: features of the ViT's second-to-last layer, CLS
    dropped ("default"), 2-layer GELU projector; tied embeddings as in stage A."""
    text = lm_config.to_dict()
    text.pop("architectures", None)
    config = LlavaConfig(
        vision_config=vision_config(spec).to_dict(),
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=spec.image_tokens,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,  # LLaVA-1.5 (mm_vision_select_layer -2)
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=bool(lm_config.tie_word_embeddings),
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def build_llava(
    lm: torch.nn.Module, vision: CLIPVisionModel, spec: VisionSpec, tokenizer: PreTrainedTokenizerFast, seed: int = 0
) -> LlavaForConditionalGeneration:
    """A LLaVA holding copies of the stage-A LM's and the ViT's weights; the projector is fresh."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava_config(lm.config, spec, tokenizer))
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.tie_weights()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    gen.max_new_tokens, gen.do_sample = 256, False
    return model


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: VisionSpec) -> LlavaProcessor:
    """`LlavaProcessor` expanding `<image>` to `spec.image_tokens` tokens, with the v2 template."""
    tokenizer.chat_template = CHAT_TEMPLATE
    sizes = TinyLlavaSpec(image_size=spec.image_size, patch_size=spec.patch_size)
    return LlavaProcessor(
        image_processor=build_image_processor(sizes), tokenizer=tokenizer, patch_size=spec.patch_size,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, image_token=IMAGE,
        num_additional_image_tokens=1,  # CLIP's CLS, which "default" drops
    )  # fmt: skip
