"""The project's own small LLaVA: tokenizer, chat template, config, processor and where it is kept.

The architecture is LLaVA-1.5's (Liu et al., 2023): a CLIP ViT vision tower, a two-layer GELU MLP
projector and a Llama decoder, built from the stock transformers classes so that every code path
that serves a real LLaVA checkpoint serves this one. Sizes are ours: small enough to ship inside
the package (bf16 weights under 40 MB), with enough decoder layers and heads (8 x 8) that layer-
and head-selective interventions have something to select.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE)  # ids 0..4 in this order

#: CLIP's normalisation constants (OpenAI CLIP), the defaults of `CLIPImageProcessor`
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: LLaVA-1.5's conversation format: "USER: <image>\n{prompt} ASSISTANT: {answer}</s>USER: ...".
#: Images come first in a user turn whatever their place in the content list, as in LLaVA-1.5.
#: Content may be a string or a list of {"type": "image"} / {"type": "text", "text": ...} items.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set texts = [message['content']] -%}{%- set images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{ texts | join(' ') + ' ' }}"
    "{%- elif message['role'] == 'user' -%}USER: {{ '<image>\n' * images }}{{ texts | join(' ') + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}ASSISTANT: {% generation %}{{ texts | join(' ') }}</s>{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def chat_text(turns: Iterable[tuple[str, str]], image: bool = True) -> tuple[str, list[tuple[int, int]]]:
    """A conversation as `CHAT_TEMPLATE` renders it, and the character spans that carry the loss.

    Each span runs from the space after "ASSISTANT:" through "</s>", so it covers the answer's
    tokens and the end-of-sequence token and nothing of the prompt. Rendering in Python (checked
    against the Jinja template by a test) keeps tokenising 100k+ conversations fast.
    """
    text, spans = "", []
    for i, (user, assistant) in enumerate(turns):
        text += "USER: " + ("<image>\n" if image and i == 0 else "") + user + " ASSISTANT:"
        start = len(text)
        text += " " + assistant + EOS
        spans.append((start, len(text)))
    return text, spans


def messages_of(turns: Iterable[tuple[str, str]]) -> list[dict]:
    """The same conversation as chat messages (image in the first user turn)."""
    messages = []
    for i, (user, assistant) in enumerate(turns):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": user}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant}]})
    return messages


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`; it adds `<s>` in front like Llama's does.

    Byte-level, so any prompt can be encoded, even words the world never uses. Deterministic for
    the same texts in the same order.
    """
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return wrap_tokenizer(core)


def wrap_tokenizer(core: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around a trained `tokenizers.Tokenizer`, with the chat template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        model_max_length=1024,
        padding_side="left",  # batched generation appends to the right
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Architecture of the tiny LLaVA. Defaults are the packaged model's (our choice, sized so
    that bf16 weights stay under 40 MB); `TinyLlavaSpec.for_tests()` is a fast random one."""

    image_size: int = 224
    patch_size: int = 16  # 14 x 14 = 196 image tokens
    vision_hidden: int = 256
    vision_layers: int = 6
    vision_heads: int = 4
    vision_intermediate: int = 768
    text_hidden: int = 384
    text_layers: int = 8
    text_heads: int = 8
    text_kv_heads: int = 8
    text_intermediate: int = 960
    max_positions: int = 1024

    @classmethod
    def for_tests(cls) -> TinyLlavaSpec:
        return cls(
            image_size=64,
            patch_size=16,
            vision_hidden=32,
            vision_layers=2,
            vision_heads=2,
            vision_intermediate=64,
            text_hidden=32,
            text_layers=2,
            text_heads=4,
            text_kv_heads=4,
            text_intermediate=64,
            max_positions=512,
        )

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_config(tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec = TinyLlavaSpec()) -> LlavaConfig:
    """LLaVA-1.5 layout: CLIP tower (patch features without CLS), MLP projector, Llama decoder."""
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_intermediate,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=spec.vision_heads,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            projection_dim=spec.vision_hidden,
            hidden_act="gelu",
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=spec.text_hidden,
            intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads,
            vocab_size=len(tokenizer),
            max_position_embeddings=spec.max_positions,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=spec.image_tokens,  # informational in transformers; keep it true
        projector_hidden_act="gelu",
        # the last layer, not LLaVA's penultimate: trained from scratch, every layer should learn
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    config.text_config.pad_token_id = tokenizer.pad_token_id
    return config


def build_image_processor(spec: TinyLlavaSpec = TinyLlavaSpec()) -> CLIPImageProcessor:
    """CLIP preprocessing at the model's size (resize shorter side, centre crop, CLIP mean/std)."""
    return CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec = TinyLlavaSpec()) -> LlavaProcessor:
    """`LlavaProcessor` that expands each `<image>` into `spec.image_tokens` image tokens."""
    return LlavaProcessor(
        image_processor=build_image_processor(spec),
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
        num_additional_image_tokens=1,  # CLIP's CLS, which the "default" strategy drops
    )


def build_model(
    config: LlavaConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> LlavaForConditionalGeneration:
    """Randomly initialised model with generation settings for the tokenizer's special tokens."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(dtype)
    gen = model.generation_config
    gen.bos_token_id = config.text_config.bos_token_id
    gen.eos_token_id = config.text_config.eos_token_id
    gen.pad_token_id = config.text_config.pad_token_id
    gen.max_new_tokens = 256
    gen.do_sample = False
    return model


def checkpoint_dir() -> Path:
    """Where the packaged, trained tiny model lives (`lvlm_guard/embedded/checkpoints/tiny-coco/`)."""
    return Path(__file__).resolve().parent / "checkpoints" / "tiny-coco"
