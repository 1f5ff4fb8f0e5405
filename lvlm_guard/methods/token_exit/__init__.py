"""Visual-token exit (DyVTE: Qiong Wu, Wenhao Lin, Weihao Ye, Yiyi Zhou, Xiaoshuai Sun, Rongrong Ji,
"Accelerating Multimodal Large Language Models via Dynamic Visual-Token Exit and the Empirical
Findings"; official code DoubtedSteam/DyVTE).

DyVTE's finding: after some layer the text tokens have absorbed what they need from the image,
and the visual tokens can leave the sequence with little quality loss and a large speed-up.
This guard removes them after decoder layer `layer` (the mechanics are in
`lvlm_guard.methods.token_exit.hooks`): layers <= `layer` run on the full sequence, later layers and
their KV cache on the text tokens only. With `router=<dir>` (or `router=tiny-coco`, the shipped
one) the exit layer is DyVTE's learned decision (`lvlm_guard.methods.token_exit.router`): that is the paper's
method. The fixed `layer` (no router) is our extension, for studying quality against the exit layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch

from lvlm_guard.engine.edits import InterventionPlan, TokenExit
from lvlm_guard.errors import InterventionConfigError
from lvlm_guard.methods.base import Intervention, register_method
from lvlm_guard.methods.settings import LAYER, UNIT
from lvlm_guard.methods.token_exit.hooks import TokenExitHooks
from lvlm_guard.methods.token_exit.router import ExitRouter, after_image_mask, router_features
from lvlm_guard.models.base import ModelSpec

CHECKPOINTS = Path(__file__).resolve().parents[2] / "embedded" / "checkpoints"  # the packaged routers


def router_decision(
    router: ExitRouter, threshold: float, layer: int, hidden: torch.Tensor, image_tokens, attention_mask
) -> bool:
    """Exit after `layer` when every sequence's router gives p(exit) > threshold (one exit per batch)."""
    if not bool(image_tokens.any()):
        return False  # nothing to remove (an image-free forward)
    features = router_features(hidden, after_image_mask(image_tokens, attention_mask).to(hidden.device))
    return bool((router.exit_probability(layer, features) > threshold).all())


def resolve_router(name: str) -> Path:
    """`tiny-coco` -> the shipped router of the embedded model; anything else is a directory."""
    shipped = CHECKPOINTS / f"{name}-exit-router"
    return shipped if shipped.is_dir() else Path(name)


@register_method
@dataclass(frozen=True)
class VisualTokenExit(Intervention):
    name = "exit"
    purpose = "speed"  # DyVTE makes decoding cheaper; its quality numbers are a cost, not a guard's gain
    bounds: ClassVar = {"layer": LAYER, "threshold": UNIT}  # threshold: a probability of exiting

    layer: int | None = None  # None: the middle layer (16 of LLaVA-1.5-7B's 32; issue 5 benchmarks 8/12/16)
    router: str | None = None  # a router directory or "tiny-coco"; replaces the fixed layer
    threshold: float = 0.5  # DyVTE: argmax of the router's two logits = p(exit) > 0.5

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        if not 0 < self.threshold < 1:
            raise InterventionConfigError(f"exit: threshold must be in (0, 1), got {self.threshold}")
        if self.router is not None:
            router = ExitRouter.load(resolve_router(self.router))
            if router.num_layers != spec.num_layers:
                raise InterventionConfigError(
                    f"exit: router {self.router!r} has {router.num_layers} layers, the model {spec.num_layers}"
                )
            return InterventionPlan(
                token_exit=TokenExit(None, partial(router_decision, router, self.threshold), TokenExitHooks)
            )
        layer = spec.num_layers // 2 if self.layer is None else self.layer
        if not 0 <= layer < spec.num_layers:
            raise InterventionConfigError(
                f"exit: layer {layer} does not exist; the model has layers 0..{spec.num_layers - 1}"
            )
        return InterventionPlan(token_exit=TokenExit(layer, hooks=TokenExitHooks))
