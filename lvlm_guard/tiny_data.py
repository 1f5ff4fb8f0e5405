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
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from lvlm_guard.tiny_model import CLIP_MEAN, CLIP_STD, IMAGE, chat_text
from lvlm_guard.world.instructions import Conversation

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

    `image_files` lists the images in the order of the image tensor; each conversation's
    `image_file` must be among them.
    """
    row_of = {name: i for i, name in enumerate(image_files)}
    rendered = [chat_text(c.turns) for c in conversations]
    batch = tokenizer([text for text, _ in rendered], return_offsets_mapping=True)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    n = len(conversations)
    input_ids = torch.full((n, max_len), tokenizer.pad_token_id, dtype=torch.int32)
    labels = torch.full((n, max_len), IGNORE, dtype=torch.int32)
    lengths = torch.zeros(n, dtype=torch.int32)
    truncated = 0
    for row, ((_, spans), ids, offsets) in enumerate(zip(rendered, batch["input_ids"], batch["offset_mapping"])):
        ids = np.asarray(ids, dtype=np.int64)
        starts = np.asarray([start for start, _ in offsets])
        answer = np.zeros(len(ids), dtype=bool)
        for a, b in spans:
            answer |= (starts >= a) & (starts < b)
        lab = np.where(answer, ids, IGNORE)
        at = np.flatnonzero(ids == image_id)  # one <image> -> one token per patch
        if len(at):
            i = int(at[0])
            ids = np.concatenate([ids[:i], np.full(image_tokens, image_id), ids[i + 1 :]])
            lab = np.concatenate([lab[:i], np.full(image_tokens, IGNORE), lab[i + 1 :]])
        if len(ids) > max_len:
            ids, lab, truncated = ids[:max_len], lab[:max_len], truncated + 1
        input_ids[row, : len(ids)] = torch.from_numpy(ids)
        labels[row, : len(lab)] = torch.from_numpy(lab)
        lengths[row] = len(ids)
    image_index = torch.tensor([row_of[c.image_file] for c in conversations], dtype=torch.int64)
    width = int(lengths.max()) if n else 0  # drop padding no row needs
    return EncodedConversations(input_ids[:, :width], labels[:, :width], lengths, image_index, truncated)


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
