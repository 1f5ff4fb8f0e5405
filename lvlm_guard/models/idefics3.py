"""Idefics3 and SmolVLM: SigLIP tower, pixel-shuffle connector, Llama-style decoder.

An image is split into a grid of sub-images plus a downscaled global one; each becomes
`image_seq_len` `<image>` tokens. The processor lays one image out as

    <fake> <row_1_col_1> <image>*n <fake> <row_1_col_2> <image>*n \\n ... \\n
    \\n <fake> <global-img> <image>*n <fake>

(`<fake>` is `<fake_token_around_image>`; an image small enough not to be split is only the
last line). Laurençon et al. 2024, "Building and better understanding vision-language models"
(Idefics3), Sec. 2; transformers `Idefics3Processor.replace_image_token`. SmolVLM
(`SmolVLMForConditionalGeneration`) has the same module tree and token layout.
"""

from __future__ import annotations

import torch
from torch import nn

from lvlm_guard.errors import InputMismatchError
from lvlm_guard.models.base import ImageSpan, ModelAdapter, _runs_of_true
from lvlm_guard.models.registry import register_adapter


@register_adapter
class Idefics3Adapter(ModelAdapter):
    """Image tokens are the `<image>` positions only; an image's span covers all its sub-images.

    A span runs from the image's first `<image>` token to its last (end exclusive), so it also
    holds the `<fake_token_around_image>`, `<row_i_col_j>`, newline and `<global-img>` tokens
    between sub-images: one region per image, as methods that ask "where is the image" expect.
    `image_token_mask` stays True only at real image tokens; intersect the two for an image's
    tokens alone.
    """

    family = "idefics3"
    no_cls_attention = (
        "its SigLIP tower has no CLS token (patches only, pixel-shuffled into image tokens), so"
        " PAINT's CLS->patch attention does not exist here"
    )
    architectures = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    # transformers matches these from the start of the module path (or as its suffix)
    unquantized_modules = ("model.vision_model", "model.connector", "lm_head")

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    def image_spans(self, input_ids: torch.Tensor) -> list[list[ImageSpan]]:
        """Per sequence, one `[first image token, last image token + 1)` span per image.

        Every sub-image is `<fake> <tag> <image>*n`, so the token two before a run is the
        `<fake_token_around_image>` token (its id is read from there, the config does not hold
        it). A run closes its image when a `<fake>` follows it and no next sub-image starts
        right after (`<fake> <tag> <image>`): that is the global sub-image's closing token.
        """
        mask = self.image_token_mask(input_ids)
        spans: list[list[ImageSpan]] = []
        for ids, row in zip(input_ids.tolist(), mask.tolist()):
            runs = _runs_of_true(row)
            fake = ids[runs[0][0] - 2] if runs and runs[0][0] >= 2 else None
            images: list[ImageSpan] = []
            first = None
            for start, end in runs:
                if start < 2 or ids[start - 2] != fake:
                    raise InputMismatchError(
                        f"image tokens at {start} are not preceded by <fake_token_around_image> and a"
                        " sub-image tag, as the Idefics3 processor lays them out"
                    )
                first = start if first is None else first
                next_sub_image = end + 2 < len(ids) and ids[end] == fake and row[end + 2]
                if not next_sub_image and end < len(ids) and ids[end] == fake:
                    images.append((first, end))
                    first = None
            if first is not None:
                raise InputMismatchError(
                    f"the image starting at {first} is cut off: no <fake_token_around_image> closes it"
                )
            spans.append(images)
        return spans

    def processor_inputs(self, processor, images: list[list], texts: list[str]):
        """The Idefics3 processor takes one list of images per prompt.

        Special tokens are not added where the rendered template already starts with the BOS
        token (Idefics3's does), the rule transformers' `apply_chat_template` applies.
        """
        bos = processor.tokenizer.bos_token
        add_special_tokens = not (bos and texts and texts[0].startswith(bos))
        return processor(
            images=images if any(images) else None,
            text=texts,
            padding=True,
            add_special_tokens=add_special_tokens,
            return_tensors="pt",
        )
