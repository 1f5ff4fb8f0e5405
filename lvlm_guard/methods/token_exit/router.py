"""DyVTE's learned exit decision (Qiong Wu, Wenhao Lin, Weihao Ye, Yiyi Zhou, Xiaoshuai Sun, Rongrong
Ji, "Accelerating Multimodal Large Language Models via Dynamic Visual-Token Exit and the Empirical
Findings"; official code DoubtedSteam/DyVTE, `llava/model/language_model/modeling_llama.py`).

One router per decoder layer (`Router`, modeling_llama.py:461-477): `Linear(2D -> 2048, no bias)
-> GELU -> Linear(2048 -> 2, no bias)` (its `Dropout(0.1)` is defined but never applied). Its input,
after layer l (modeling_llama.py:739-749 at inference, :666-685 in training): `concat(mean of the
text states after the image, excluding the last token; the last token's state)`, detached. At
prefill, layer by layer from the first, the image tokens leave the sequence after the first layer
whose router gives logit[exit] > logit[stay] (:756, i.e. softmax p(exit) > 0.5, our `threshold`).

Deviations, each a named option:
- `width`: the official 2048 is the default; the shipped tiny-coco router uses 128 (its hidden size
  is 384, a tenth of LLaMA's, and the weights must stay small in the repository).
- batches: the official code is batch-1 (`hidden_states[0, ...]`). Ours exits at the first layer
  where every sequence's router says exit (one exit layer per batch, so the re-packed sequence stays
  consistent); the layer found at prefill is kept for the decoding steps of that prompt.
- a prompt with at most one text token after the image has no mean: the last token stands in.
- the official code hard-codes the image span (35..35+576); ours takes the adapter's image mask.

Training (`scripts/train_exit_router.py`, after the official `forward` with `self.training`,
modeling_llama.py:906-975, and `scripts/v1_5/finetune_visual_gate.sh`): the MLLM frozen; for each
batch one random exit layer; label 1 (exit OK) when the greedy answer with the image gone after that
layer agrees with the full model's on > 99% of answer tokens and its answer loss is < 1.03 x the full
model's; cross-entropy (class weights 1, 1); AdamW lr 6e-5, weight decay 0, cosine with 3% warm-up.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lvlm_guard.errors import InterventionConfigError


def router_features(hidden: torch.Tensor, after_image: torch.Tensor) -> torch.Tensor:
    """`[b, 2D]`: mean state of the text tokens after the image (`after_image[b, q]`) excluding the
    last token, and the last token's state (DyVTE modeling_llama.py:744-749).

    A sequence with no other text token after the image uses the last token for the mean too.
    """
    weights = after_image.to(hidden.dtype).clone()
    weights[:, -1] = 0  # the official mean stops before the last token (`[35+576:-1]`)
    counts = weights.sum(1, keepdim=True)
    mean = (hidden * weights[..., None]).sum(1) / counts.clamp(min=1)
    last = hidden[:, -1]
    mean = torch.where(counts > 0, mean, last)
    return torch.cat([mean, last], dim=-1)


DYVTE_WIDTH = 2048  # DyVTE modeling_llama.py:467


class Router(nn.Module):
    """One layer's router: `[2D] -> width -> GELU -> (stay, exit)`, no biases (DyVTE's `Router`)."""

    def __init__(self, hidden_size: int, width: int = DYVTE_WIDTH) -> None:
        super().__init__()
        self.w1 = nn.Linear(2 * hidden_size, width, bias=False)
        self.w2 = nn.Linear(width, 2, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.gelu(self.w1(features)))


class ExitRouter(nn.Module):
    """Per-layer routers (`Router`), one per decoder layer."""

    def __init__(self, num_layers: int, hidden_size: int, width: int = DYVTE_WIDTH) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.width = width
        self.routers = nn.ModuleList(Router(hidden_size, width) for _ in range(num_layers))

    def logits(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """`[b, 2]` (stay, exit) logits of the router of `layer` (features from `router_features`)."""
        router = self.routers[layer]
        if router.w1.weight.device != features.device:
            self.to(features.device)
        return router(features.to(router.w1.weight.dtype)).float()

    def exit_probability(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """`[b]` p(exit) of the router of `layer`."""
        return self.logits(layer, features).softmax(-1)[:, 1]

    def save(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Weights in `dtype` (half by default: a router is a speed aid, and the file stays small)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.to(dtype) for k, v in self.state_dict().items()}
        blob = {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "width": self.width,
            "state_dict": state,
        }
        torch.save(blob, path / "router.pt")

    @classmethod
    def load(cls, path: str | Path) -> ExitRouter:
        file = Path(path) / "router.pt"
        if not file.is_file():
            raise InterventionConfigError(f"exit: no router weights at {file}")
        blob = torch.load(file, map_location="cpu", weights_only=True)
        if "width" not in blob:
            raise InterventionConfigError(
                f"exit: {file} is a linear router of an older lvlm_guard; retrain it with scripts/train_exit_router.py"
            )
        router = cls(blob["num_layers"], blob["hidden_size"], blob["width"])
        router.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
        return router.eval()


def after_image_mask(image_tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """`[b, q]` text tokens after each sequence's last image token (and not padding)."""
    q = image_tokens.shape[1]
    idx = torch.arange(q, device=image_tokens.device)
    last_image = torch.where(image_tokens, idx, -1).amax(1, keepdim=True)
    mask = idx[None] > last_image
    if attention_mask is not None:
        mask &= attention_mask[:, -q:].bool()
    return mask
