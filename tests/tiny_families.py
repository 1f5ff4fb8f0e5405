"""Tiny random-weight models + processors of every supported family, built from configs offline.

Each builder returns `(model, processor)` like `tiny_models.tiny_llava`: a WordLevel tokenizer
with the family's special tokens, the family's real processor class (PIL image backends: there
is no torchvision here) and a chat template close to the one its checkpoints ship. Sizes are
chosen so that images of different shapes give different image-token counts (anyres tiles,
dynamic resolution, sub-image splits).
"""

from __future__ import annotations

import torch
from tiny_models import WORDS, text_config, tiny_llava
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    GotOcr2ImageProcessorPil,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

HIDDEN, LAYERS, HEADS, KV_HEADS = 32, 4, 4, 2  # GQA: two query heads per key/value head
# 16x16 (sub-)images of 4x4 patches for the CLIP / SigLIP towers
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4
)

# llava-hf/llava-v1.6-mistral-7b-hf chat_template.json: images first, each "<image>\n", then text
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    " [/INST]{% else %} {{ message['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
)

# Qwen/Qwen2-VL-7B-Instruct chat_template.json (without video and vision ids), shared by Qwen2.5-VL
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# HuggingFaceM4/Idefics3-8B-Llama3 chat_template.json
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# transformers smolvlm/processing_smolvlm.py DEFAULT_CHAT_TEMPLATE without video: Idefics3's, "<|im_start|>" first
SMOLVLM_CHAT_TEMPLATE = IDEFICS3_CHAT_TEMPLATE.replace("<|begin_of_text|>", "<|im_start|>")

ROW_COL_TOKENS = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))
IDEFICS3_SPECIALS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *ROW_COL_TOKENS)


def family_tokenizer(
    specials: tuple[str, ...],
    words: tuple[str, ...] = (),
    *,
    pad: str,
    eos: str,
    bos: str | None = None,
    named: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over `WORDS` + `words`, with `specials` as unsplittable added tokens.

    Unlike `tiny_models.tiny_tokenizer` it keeps "\\n" as a token, as the real BPE tokenizers do:
    the LLaVA-NeXT and Idefics3 layouts put newlines between images and sub-image rows.
    """
    plain = [t for t in (pad, eos, bos, "<unk>") if t is not None]
    vocab_list = [*dict.fromkeys([*plain, *specials, "\n", ":", *words, *WORDS])]
    core = Tokenizer(models.WordLevel(vocab={tok: i for i, tok in enumerate(vocab_list)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Punctuation(),
        ]
    )
    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token="<unk>",
        extra_special_tokens=named,
    )
    tok.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in plain]})
    return tok


def _text_config(tokenizer: PreTrainedTokenizerFast, **extra) -> dict:
    return text_config(tokenizer, hidden=HIDDEN, layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, **extra)


def _finish(model, tokenizer, attn_implementation: str, dtype: torch.dtype):
    model = model.to(dtype).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_llava_next(seed: int = 0, *, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """A random LlavaNextForConditionalGeneration + LlavaNextProcessor.

    16x16 tiles of 4x4 patches, grid pinpoints up to 32x32: 16 base tokens per image plus the
    unpadded grid of up to 8x8 features with one image_newline per row (34 to 88 tokens in
    all), depending on the image's aspect ratio.
    """
    tokenizer = family_tokenizer(
        ("<image>", "[INST]", "[/INST]"), pad="<pad>", eos="</s>", bos="<s>", named={"image_token": "<image>"}
    )
    pinpoints = [[16, 32], [32, 16], [32, 32]]
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", projection_dim=32, **VISION),
        text_config=dict(model_type="mistral", **_text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = _finish(LlavaNextForConditionalGeneration(config), tokenizer, attn_implementation, dtype)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=4,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model, processor


def tiny_qwen2_vl(
    seed: int = 0, *, version: str = "2", attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32
):
    """A random Qwen2-VL (`version="2"`) or Qwen2.5-VL (`"2.5"`) + its processor.

    4x4 patches merged 2x2: an image resized to HxW (multiples of 8, at most 32x32 pixels in
    all) gives H*W/64 image tokens between <|vision_start|> and <|vision_end|>.
    """
    tokenizer = family_tokenizer(
        ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
        ("system", "user", "assistant", "You", "are", "helpful"),
        pad="<|endoftext|>",
        eos="<|im_end|>",
        named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    # M-RoPE sections (temporal, height, width) must sum to head_dim / 2 = 4 (real: [16, 24, 24])
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
    vision = dict(depth=2, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        config = Qwen2VLConfig(
            text_config=_text_config(tokenizer, rope_parameters=rope),
            vision_config=dict(embed_dim=32, hidden_size=HIDDEN, mlp_ratio=2, **vision),
            **ids,
        )
        model_cls, processor_cls = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    elif version == "2.5":
        config = Qwen2_5_VLConfig(
            text_config=_text_config(tokenizer, rope_parameters=rope),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                out_hidden_size=HIDDEN,
                window_size=16,  # 2x2 merged tokens per window
                fullatt_block_indexes=[1],
                **vision,
            ),
            **ids,
        )
        model_cls, processor_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    else:
        raise ValueError(f"unknown Qwen-VL version {version!r}")
    torch.manual_seed(seed)
    model = _finish(model_cls(config), tokenizer, attn_implementation, dtype)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32}, patch_size=4, temporal_patch_size=2, merge_size=2
    )
    processor = _without_video(processor_cls)(image_processor, tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE)
    return model, processor


def _without_video(processor_cls: type) -> type:
    """The Qwen processor class minus its video processor, whose base class needs torchvision.

    `ProcessorMixin` takes its sub-processors from the `__init__` signature; images and text
    are processed by the real class's code.
    """

    class ImageTextOnly(processor_cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageTextOnly.__name__ = ImageTextOnly.__qualname__ = processor_cls.__name__
    return ImageTextOnly


def tiny_idefics3(
    seed: int = 0, *, smolvlm: bool = False, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32
):
    """A random Idefics3 (or SmolVLM with `smolvlm=True`) + Idefics3Processor.

    16x16 sub-images of 4x4 patches, pixel-shuffled by 2: 4 <image> tokens per sub-image. An
    image is resized to a longest edge of 32 and split into up to 2x2 sub-images plus the
    global one. SmolVLM lays tokens out the same way; its own processor needs `num2words`
    (not installed here), so it runs with the Idefics3 processor and SmolVLM's template.
    """
    begin = "<|im_start|>" if smolvlm else "<|begin_of_text|>"
    tokenizer = family_tokenizer(
        (begin, *IDEFICS3_SPECIALS),
        ("User", "Assistant"),
        pad="<|finetune_right_pad_id|>",
        eos="<end_of_utterance>",
        bos=begin,
    )
    config_cls, model_cls = (
        (SmolVLMConfig, SmolVLMForConditionalGeneration)
        if smolvlm
        else (Idefics3Config, Idefics3ForConditionalGeneration)
    )
    config = config_cls(
        text_config=dict(model_type="llama", **_text_config(tokenizer)),
        vision_config=VISION,
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = _finish(model_cls(config), tokenizer, attn_implementation, dtype)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16})
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=SMOLVLM_CHAT_TEMPLATE if smolvlm else IDEFICS3_CHAT_TEMPLATE,
    )
    return model, processor


# llava-hf/llava-onevision-qwen2-0.5b-ov-hf chat_template.json (text and images, no video), Qwen2 style
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# google/gemma-3-4b-it chat_template.json (no system turn): each image as <start_of_image>
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant'"
    " else message['role'] }}\n{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# OpenGVLab/InternVL3-1B-hf chat_template.jinja (no system turn): each image as <IMG_CONTEXT>
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_CHAT_WORDS = ("system", "user", "assistant", "model", "You", "are", "helpful")


def tiny_llava_onevision(seed: int = 0, *, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """A random LlavaOnevisionForConditionalGeneration (SigLIP tower, Qwen2 decoder) + its processor.

    16x16 tiles of 4x4 patches, grid pinpoints up to 32x32 (as `tiny_llava_next`): 16 base tokens
    plus the unpadded grid with one image_newline per row.
    """
    tokenizer = family_tokenizer(
        ("<image>", "<video>", "<|im_start|>", "<|im_end|>"),
        QWEN_CHAT_WORDS,
        pad="<|endoftext|>",
        eos="<|im_end|>",
        named={"image_token": "<image>", "video_token": "<video>"},
    )
    pinpoints = [[16, 32], [32, 16], [32, 32]]
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", **VISION),
        text_config=dict(model_type="qwen2", **_text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = _finish(LlavaOnevisionForConditionalGeneration(config), tokenizer, attn_implementation, dtype)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=pinpoints
    )
    processor = _without_video(LlavaOnevisionProcessor)(
        image_processor,
        tokenizer,
        chat_template=ONEVISION_CHAT_TEMPLATE,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
    )
    return model, processor


def tiny_gemma3(seed: int = 0, *, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """A random Gemma3ForConditionalGeneration + Gemma3Processor.

    16x16 images of 4x4 SigLIP patches, average-pooled 2x2: 4 <image_soft_token> per image.
    """
    specials = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    tokenizer = family_tokenizer(
        specials,
        QWEN_CHAT_WORDS,
        pad="<pad>",
        eos="<eos>",
        bos="<bos>",
        named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", **VISION),
        # two sliding-window layers, then global ones (real: 5 sliding, 1 global): a window of 8 hides the
        # image from the last row in layers 0-1, where no guard edits by default
        text_config=_text_config(
            tokenizer,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=8,
            layer_types=["sliding_attention"] * 2 + ["full_attention"] * (LAYERS - 2),
        ),
        mm_tokens_per_image=4,
        image_token_index=ids("<image_soft_token>"),
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
    )
    torch.manual_seed(seed)
    model = _finish(Gemma3ForConditionalGeneration(config), tokenizer, attn_implementation, dtype)
    image_processor = Gemma3ImageProcessorPil(size={"height": 16, "width": 16})
    processor = Gemma3Processor(image_processor, tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=4)
    return model, processor


def tiny_internvl(seed: int = 0, *, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """A random InternVLForConditionalGeneration (Qwen2 decoder) + InternVLProcessor.

    16x16 tiles of 4x4 patches, pixel-shuffled by 0.5: 4 <IMG_CONTEXT> tokens per tile; an image
    becomes up to 4 tiles plus a thumbnail, depending on its aspect ratio.
    """
    tokenizer = family_tokenizer(
        ("<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|im_start|>", "<|im_end|>"),
        QWEN_CHAT_WORDS,
        pad="<|endoftext|>",
        eos="<|im_end|>",
        named={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=[16, 16],
            patch_size=[4, 4],
        ),  # fmt: skip
        text_config=dict(model_type="qwen2", **_text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
    )
    torch.manual_seed(seed)
    model = _finish(InternVLForConditionalGeneration(config), tokenizer, attn_implementation, dtype)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 16, "width": 16}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = _without_video(InternVLProcessor)(
        image_processor, tokenizer, chat_template=INTERNVL_CHAT_TEMPLATE, image_seq_length=4
    )
    return model, processor


#: family name -> builder of (model, processor); the adapter of each is found by class name
FAMILIES = {
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": lambda **kw: tiny_qwen2_vl(version="2.5", **kw),
    "idefics3": tiny_idefics3,
    "smolvlm": lambda **kw: tiny_idefics3(smolvlm=True, **kw),
    "llava_onevision": tiny_llava_onevision,
    "gemma3": tiny_gemma3,
    "internvl": tiny_internvl,
}
