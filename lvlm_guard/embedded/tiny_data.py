"""Turn world conversations and images into the tensors that train the tiny LLaVA.

Everything is prepared once, up front, as padded integer tensors and one uint8 image tensor, so
that a training step on a GPU only gathers rows: no Python data loader stands in the hot loop. The
sequences are exactly what `LlavaProcessor` produces for the same chat (BOS, `<image>` expanded to
one token per patch), and the image normalisation equals `CLIPImageProcessor`'s on the world's
square images (both checked by tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from lvlm_guard.embedded.tiny_model import CLIP_MEAN, CLIP_STD, IMAGE, chat_text
from lvlm_guard.embedded.world.instructions import Conversation

IGNORE = -100  # label of positions that carry no loss (prompt, image, padding)


@dataclass(frozen=True)
class EncodedConversations:
    """Right-padded token ids and labels, one row per conversation, and the image of each row."""

    input_ids: torch.Tensor  # [n, max_len] int32, padded with the pad id
    labels: torch.Tensor  # [n, max_len] int32, IGNORE outside assistant answers
    lengths: torch.Tensor  # [n] int32
    image_index: torch.Tensor  # [n] int64, row of the image tensor
    truncated: int  # conversations cut at max_len


def encode_conversations(
    conversations: Sequence[Conversation],
    image_files: Sequence[str],
    tokenizer: PreTrainedTokenizerFast,
    image_tokens: int,
    max_len: int = 640,
) -> EncodedConversations:
    """Tokenise conversations with loss only on answer tokens (and their `</s>`).

    Prompts and answers are tokenised as separate pieces in two batched calls; the byte-level
    pre-tokenizer splits the rendered chat at exactly those places (before the space that opens
    an answer, and around `</s>`), so the pieces join into the same ids as the whole text (a test
    checks this against the processor). `image_files` lists the images in the order of the image
    tensor; each conversation's `image_file` must be among them.
    """
    row_of = {name: i for i, name in enumerate(image_files)}
    prompts, answers = [], []
    for conv in conversations:
        text, spans = chat_text(conv.turns)
        starts = [0] + [b for _, b in spans[:-1]]
        prompts += [text[s:a] for s, (a, _) in zip(starts, spans)]
        answers += [text[a:b] for a, b in spans]
    core = tokenizer.backend_tokenizer  # the Rust tokenizer: no per-row Python conversion
    prompt_ids = [e.ids for e in core.encode_batch(prompts, add_special_tokens=False)]
    answer_ids = [e.ids for e in core.encode_batch(answers, add_special_tokens=False)]
    image_id, bos = tokenizer.convert_tokens_to_ids(IMAGE), tokenizer.bos_token_id
    rows_ids, rows_labels, truncated, piece = [], [], 0, 0
    for conv in conversations:
        ids, labels = [bos], [IGNORE]
        for turn in range(len(conv.turns)):
            prompt, answer = prompt_ids[piece], answer_ids[piece]
            piece += 1
            if turn == 0 and image_id in prompt:  # one <image> -> one token per patch
                i = prompt.index(image_id)
                prompt = prompt[:i] + [image_id] * image_tokens + prompt[i + 1 :]
            ids += prompt + answer
            labels += [IGNORE] * len(prompt) + answer
        if len(ids) > max_len:
            ids, labels, truncated = ids[:max_len], labels[:max_len], truncated + 1
        rows_ids.append(ids)
        rows_labels.append(labels)
    lengths = torch.tensor([len(r) for r in rows_ids], dtype=torch.int32)
    width = int(lengths.max()) if len(lengths) else 0  # no more padding than the longest row needs
    filled = torch.arange(width)[None, :] < lengths[:, None]
    input_ids = torch.full((len(rows_ids), width), tokenizer.pad_token_id, dtype=torch.int32)
    labels = torch.full((len(rows_ids), width), IGNORE, dtype=torch.int32)
    total = int(lengths.sum())
    input_ids[filled] = torch.from_numpy(np.fromiter(chain.from_iterable(rows_ids), np.int32, total))
    labels[filled] = torch.from_numpy(np.fromiter(chain.from_iterable(rows_labels), np.int32, total))
    image_index = torch.tensor([row_of[c.image_file] for c in conversations], dtype=torch.int64)
    return EncodedConversations(input_ids, labels, lengths, image_index, truncated)


def load_images(root: Path, image_files: Sequence[str], threads: int = 8) -> torch.Tensor:
    """All images as one uint8 tensor [n, height, width, 3] (decoding runs on a few threads)."""

    def read(name: str) -> np.ndarray:
        with Image.open(Path(root) / name) as img:
            return np.asarray(img.convert("RGB"))

    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(read, image_files))
    return torch.from_numpy(np.stack(arrays))


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """uint8 [b, h, w, 3] -> CLIP-normalised float [b, 3, h, w], on the images' device.

    Equals `CLIPImageProcessor` on images already at the model's size (resize and centre crop
    are then identities).
    """
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).float() * (1.0 / 255.0)
    return (x - mean) / std
