"""PAI: Paying More Attention to Image (Liu et al., ECCV 2024; official code LALBJ/PAI).

Two parts, both training-free:
1. Image attention amplification: in every layer from `start_layer` on, all heads, the
   pre-softmax score of each image key in the generating row becomes `s + alpha * |s|`
   (official `attention.py` applies it to row -1 of every forward: the prompt's last token at
   prefill, each new token while decoding).
2. Optional image-free contrastive refinement (official `CFG.py`): see `lvlm_guard.methods.pai.contrastive`.

Per-model presets (`lvlm_guard.methods.base`): alpha is None by default and comes from the loaded
model's family. The paper's setting for LLaVA-1.5 is alpha 0.5 (`paper_llava15`, chosen for the
`llava` family; the value is pinned from a summary of the paper, the PDF was not reachable); every
other family gets the repo's 0.2 (`repo`: README.md:65,82 `--alpha 0.2`, chair_eval.py:50), which
also stays available by name (`pai:preset=repo`). An explicit `alpha` wins over either. The paper's
other models (Shikra 0.6, MiniGPT-4 0.2) have no adapter family here.

Remaining deviations: none known in the two parts above (the image-free branch, as in `CFG.py`,
is not amplified).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch

from lvlm_guard.engine.edits import AttentionEdit, AttentionRows, InterventionPlan, ScoreMod
from lvlm_guard.engine.kernels.decode_kernel import AMPLIFY, DecodeKernel
from lvlm_guard.engine.state import GuardState
from lvlm_guard.errors import InterventionConfigError
from lvlm_guard.methods.base import Intervention, Preset, layer_range, register_method
from lvlm_guard.methods.pai.contrastive import ImageFreeContrast
from lvlm_guard.methods.settings import LAYER, NONNEGATIVE, POSITIVE, Range
from lvlm_guard.models.base import ModelSpec


def _amplified(score: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Official `attention.py`: `s + alpha * |s|`, with `weight` = alpha on image keys, 0 elsewhere."""
    return score + weight * score.abs()


def _image_weights(alpha: float, state: GuardState, image_keys: torch.Tensor) -> torch.Tensor:
    """`[b, k]`: alpha at image keys (built once per decoding step, shared by the layers)."""
    return state.image_key_weights(image_keys, torch.float32, alpha)[:, 0, 0]


def _amplification_bias(alpha: float, rows: AttentionRows) -> torch.Tensor:
    """`_amplified(s, w) - s` = `alpha * |s|` on image keys, from unscaled q.k in three kernels."""
    dots = rows.dot_products()
    return dots.abs_().mul_(rows.image_key_weights(dots.dtype, alpha * rows.scaling))


@register_method
@dataclass(frozen=True)
class PAI(Intervention):
    name = "pai"
    presets: ClassVar = {
        "repo": Preset({"alpha": 0.2}, "LALBJ/PAI README.md:65,82 --alpha 0.2; chair_eval.py:50"),
        "paper_llava15": Preset({"alpha": 0.5}, "PAI paper, LLaVA-1.5 setting (from a summary of the paper)"),
    }
    family_presets: ClassVar = {"llava": "paper_llava15"}
    bounds: ClassVar = {"alpha": NONNEGATIVE, "start_layer": LAYER, "end_layer": LAYER, "gamma": POSITIVE,
                        "plausibility": Range(0, 1, low_open=True)}  # fmt: skip

    preset: str = "auto"  # "auto": the loaded model's family picks (llava: paper_llava15, else repo)
    alpha: float | None = None  # None: the preset's (repo 0.2, paper LLaVA-1.5 0.5)
    start_layer: int = 2  # official --start-layer 2: the first two layers are left alone
    end_layer: int | None = None  # exclusive; official --end-layer 32 = every layer of LLaMA-7B
    gamma: float | None = 1.1  # README --gamma 1.1 (CFG on); None turns the refinement off
    plausibility: float = 0.1  # CFG.py: tokens below 0.1 x the best conditional probability dropped

    def __post_init__(self) -> None:
        self.check_preset()
        if self.alpha is not None and self.alpha < 0:
            raise InterventionConfigError(f"pai: alpha must be >= 0, got {self.alpha}")
        if self.gamma is not None and self.gamma <= 0:
            raise InterventionConfigError(f"pai: gamma must be > 0 or None, got {self.gamma}")
        if not 0 < self.plausibility <= 1:
            raise InterventionConfigError(f"pai: plausibility must be in (0, 1], got {self.plausibility}")

    def layers(self, spec: ModelSpec) -> tuple[int, ...]:
        return layer_range("pai", self.start_layer, self.end_layer, spec)

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        alpha = self.for_family(None).alpha  # a guard passes a filled config; alone: the default preset
        if alpha == 0:
            return InterventionPlan()
        amplify = ScoreMod(
            weights=partial(_image_weights, alpha),
            fn=_amplified,
            eager_bias=partial(_amplification_bias, alpha),
        )
        kernel = DecodeKernel(AMPLIFY, alpha=alpha)
        edit = AttentionEdit(rows="generating", score_mod=amplify, decode_kernel=kernel)
        return InterventionPlan(attention={layer: [edit] for layer in self.layers(spec)})

    def logits_processor(self, guard, inputs: dict):
        if self.gamma is None or self.gamma == 1:
            return None
        return ImageFreeContrast(
            guard.model,
            guard.adapter.text_only_inputs(guard.processor, inputs["prompts"], guard.device),
            gamma=self.gamma,
            plausibility=self.plausibility,
            suspend=guard.suspended,
        )
