"""DyVTE's learned exit decision (official code DoubtedSteam/DyVTE, `modeling_llama.py`).

One tiny linear router per decoder layer reads the text tokens' states after that layer:
`concat(mean state of the text tokens after the image, state of the last token)` (2 x hidden)
-> 2 logits (stay, exit). At prefill, after each layer, the image tokens leave the sequence as
soon as the router says exit (softmax p(exit) > threshold); they never come back.

Batches: DyVTE's official code is batch-1. Ours exits at the first layer where every sequence's
router says exit (one exit layer per batch, so the re-packed sequence stays consistent); the
layer found at prefill is kept for the decoding steps of that prompt.

Training (DyVTE Sec. 3): freeze the MLLM; for a sample and a layer l, label 1 (exit OK) if the
greedy answer with exit after l agrees with the full model's on > 99% of answer tokens and its
loss is < 1.03 x the full model's; cross-entropy on the router of layer l. For a real checkpoint,
run `scripts/train_exit_router.py --model <id> --split calib` (a few hundred question/caption
samples of any image-text set in its chat format) on a GPU; the weights are a few MB.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lvlm_guard.errors import InterventionConfigError


def router_features(hidden: torch.Tensor, after_image: torch.Tensor) -> torch.Tensor:
    """`[b, 2D]`: mean state of the text tokens after the image (`after_image[b, q]`) and the last state.

    A sequence with no text after the image uses the last token for the mean too.
    """
    weights = after_image.to(hidden.dtype)
    counts = weights.sum(1, keepdim=True)
    mean = (hidden * weights[..., None]).sum(1) / counts.clamp(min=1)
    last = hidden[:, -1]
    mean = torch.where(counts > 0, mean, last)
    return torch.cat([mean, last], dim=-1)


class ExitRouter(nn.Module):
    """Per-layer linear routers `[2D] -> (stay, exit)`."""

    def __init__(self, num_layers: int, hidden_size: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.routers = nn.ModuleList(nn.Linear(2 * hidden_size, 2) for _ in range(num_layers))

    def exit_probability(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """`[b]` p(exit) of the router of `layer` (features from `router_features`)."""
        router = self.routers[layer]
        if router.weight.device != features.device:
            self.to(features.device)
        logits = router(features.to(router.weight.dtype))
        return logits.float().softmax(-1)[:, 1]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "state_dict": self.state_dict()},
            path / "router.pt",
        )

    @classmethod
    def load(cls, path: str | Path) -> ExitRouter:
        file = Path(path) / "router.pt"
        if not file.is_file():
            raise InterventionConfigError(f"exit: no router weights at {file}")
        blob = torch.load(file, map_location="cpu", weights_only=True)
        router = cls(blob["num_layers"], blob["hidden_size"])
        router.load_state_dict(blob["state_dict"])
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
