"""What every model adapter answers, so that methods never ask about model classes.

An adapter wraps one loaded Hugging Face vision-language model and answers structural
questions (where the decoder layers are, head counts, o_proj) and input questions (where the
image tokens of every sequence are). One family = one file in this folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lvlm_guard.errors import ClsAttentionUnavailableError, InputMismatchError


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of the language model that interventions validate their config against."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def kv_group_size(self) -> int:
        """Query heads per key/value head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads


ImageSpan = tuple[int, int]  # [start, end) positions of one image's tokens in a sequence


class ModelAdapter:
    """Base adapter; a family overrides what differs from the LLaVA-like default.

    Class attributes name the transformers classes it serves so that `adapter_for` can find it
    from a config alone (before any weights are loaded).
    """

    family: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    #: module-name fragments that bitsandbytes must leave in full precision
    unquantized_modules: ClassVar[tuple[str, ...]] = ("lm_head",)
    #: the literal placeholder users may type in a prompt for one image
    image_placeholder: ClassVar[str] = "<image>"
    #: why `cls_attention_modules` cannot serve this family (PAINT's error message)
    no_cls_attention: ClassVar[str] = "the adapter does not expose its vision tower's CLS attention"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # --- structure ---------------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        """The decoder stack (has `.layers`)."""
        return self.model.model.language_model

    @property
    def text_config(self):
        return self.model.config.get_text_config()

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    def attention(self, layer: int) -> nn.Module:
        """Self-attention module of decoder layer `layer` (it carries `layer_idx`)."""
        return self.decoder_layers[layer].self_attn

    def o_proj(self, layer: int) -> nn.Module:
        """Output projection; its input is the concatenation of per-head outputs."""
        return self.attention(layer).o_proj

    @property
    def spec(self) -> ModelSpec:
        cfg = self.text_config
        heads = cfg.num_attention_heads
        return ModelSpec(
            num_layers=cfg.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            hidden_size=cfg.hidden_size,
        )

    # --- vision tower: CLS attention (PAINT) --------------------------------------------------
    def cls_attention_modules(self, vit_layers: Sequence[int]) -> list[nn.Module]:
        """The vision tower's self-attention modules of `vit_layers` (negative: from the end), whose
        CLS->patch attention PAINT reads; a forward pre-hook on one sees its (layer-normed) input.

        Raises ClsAttentionUnavailableError naming the family and why where the tower has no CLS
        token (SigLIP, Qwen2-VL's ViT) or its image tokens do not map back to one tower pass."""
        raise ClsAttentionUnavailableError(f"{self.family or type(self).__name__}: {self.no_cls_attention}")

    def cls_query_key(self, module: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """From a `cls_attention_modules` module's input `hidden` `[n_images, tokens, D]` (CLS first):
        the CLS query `[n, heads, 1, d]`, every key `[n, heads, tokens, d]` and the score scale."""
        raise ClsAttentionUnavailableError(f"{self.family or type(self).__name__}: {self.no_cls_attention}")

    def patch_values_at_image_tokens(self, values: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Per-patch values `[n_images, patches]` of one tower pass (images in prompt order, patches
        in the tower's order) placed at the language model's image tokens `[b, seq]` bool: `[b, seq]`
        float32, 0 at every other position."""
        raise ClsAttentionUnavailableError(f"{self.family or type(self).__name__}: {self.no_cls_attention}")

    # --- inputs ------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`[batch, seq]` bool: True at positions whose embedding comes from an image.

        Padding never holds the image token, so this is padding-aware by construction.
        """
        return input_ids == self.image_token_id

    def tokens_per_image(self, input_ids: torch.Tensor) -> int | None:
        """Fixed image-token count per image, or None where it varies (anyres, dynamic)."""
        return None

    def image_spans(self, input_ids: torch.Tensor) -> list[list[ImageSpan]]:
        """Per sequence, the `[start, end)` span of every image, in order.

        Contiguous runs of image tokens; where a family has a fixed count per image, a run of
        several adjacent images is cut into images of that size.
        """
        mask = self.image_token_mask(input_ids)
        per_image = self.tokens_per_image(input_ids)
        spans: list[list[ImageSpan]] = []
        for row in mask.tolist():
            runs = _runs_of_true(row)
            if per_image:
                cut: list[ImageSpan] = []
                for start, end in runs:
                    if (end - start) % per_image:
                        raise InputMismatchError(
                            f"an image-token run of length {end - start} at {start} is not a multiple"
                            f" of {per_image} tokens per image"
                        )
                    cut += [(s, s + per_image) for s in range(start, end, per_image)]
                runs = cut
            spans.append(runs)
        return spans

    def chat_prompt(self, processor, prompt: str, num_images: int) -> str:
        """The family's chat-template rendering of one user turn with `num_images` images.

        Images the user placed with the family's placeholder stay where they are; the others go
        before the text, as LLaVA's training data does.
        """
        placed = prompt.count(self.image_placeholder)
        if placed > num_images:
            raise InputMismatchError(
                f"prompt has {placed} image placeholders {self.image_placeholder!r} but only"
                f" {num_images} image(s) were given: {prompt[:80]!r}"
            )
        content: list[dict] = [{"type": "image"} for _ in range(num_images - placed)]
        if placed:
            pieces = prompt.split(self.image_placeholder)
            for i, piece in enumerate(pieces):
                if piece:
                    content.append({"type": "text", "text": piece})
                if i < placed:
                    content.append({"type": "image"})
        else:
            content.append({"type": "text", "text": prompt})
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def processor_inputs(self, processor, images: list[list], texts: list[str]):
        """Run the processor on a left-padded batch; images flat, in prompt order."""
        flat = [img for per_prompt in images for img in per_prompt]
        return processor(images=flat or None, text=texts, padding=True, return_tensors="pt")

    def left_padded_inputs(self, processor, images: list[list], texts: list[str]):
        """`processor_inputs` with left padding, whatever the tokenizer's own padding side."""
        tokenizer = processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            return self.processor_inputs(processor, images, texts)
        finally:
            tokenizer.padding_side = side

    def text_only_inputs(self, processor, prompts: list[str], device) -> dict[str, torch.Tensor]:
        """Inputs for the same prompts with no image (the image-free branch of contrastive methods).

        Left-padded, so that the last column is every prompt's last token, and tokenized by
        `processor_inputs` like the image branch (same special tokens, same extra inputs).
        """
        texts = [self.chat_prompt(processor, p.replace(self.image_placeholder, ""), 0) for p in prompts]
        enc = self.left_padded_inputs(processor, [[] for _ in prompts], texts)
        return {k: v.to(device) for k, v in enc.items() if isinstance(v, torch.Tensor)}


def _runs_of_true(row: list[bool]) -> list[ImageSpan]:
    runs: list[ImageSpan] = []
    start = None
    for i, flag in enumerate(row + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs
