"""Tiny random-weight models of the real transformers architectures, built from configs offline."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

WORDS = (
    "a an the is there in image of yes no not this picture describe detail please what and with on "
    "dog cat car bus person cup fork knife table chair tv laptop book clock . , ? !"
).split()

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% else %}"
    "{{ item['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: {{ message['content'][0]['text'] }}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_tokenizer(extra_special: tuple[str, ...] = ("<image>",)) -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<s>", "</s>", "<unk>", *extra_special]
    vocab = {tok: i for i, tok in enumerate([*specials, "USER", ":", "ASSISTANT", "\n", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"} if "<image>" in extra_special else None,
    )
    tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return tok


def text_config(
    tokenizer: PreTrainedTokenizerFast, *, hidden: int, layers: int, heads: int, kv_heads: int, **extra
) -> dict:
    """A tiny decoder config of any family (extra keys add the family's own fields)."""
    return dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        initializer_range=0.2,  # peaked attention, so edits show
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def tiny_llava(
    seed: int = 0,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    hidden: int = 32,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    vision_layers: int = 2,
):
    """A random LlavaForConditionalGeneration + LlavaProcessor (16 image tokens at the defaults)."""
    tokenizer = tiny_tokenizer()
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=32,
        ),
        text_config=text_config(
            tokenizer, hidden=hidden, layers=num_layers, heads=num_heads, kv_heads=num_kv_heads, model_type="llama"
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model, processor


def assert_cached_equals_recomputation(model, inputs: dict, steps: int, tol: float = 1e-4) -> None:
    """Generation with a KV cache gives, step by step, the last-row logits of a full forward
    without cache over the prompt plus the tokens generated so far (guards must be cache-invariant)."""
    cached = model.generate(
        **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for step in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"], use_cache=False).logits
        torch.testing.assert_close(logits[:, -1], cached.logits[step], rtol=tol, atol=tol)
        ids = torch.cat([ids, cached.sequences[:, ids.shape[1] : ids.shape[1] + 1]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
