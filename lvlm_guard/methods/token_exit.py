"""Visual-token exit (DyVTE: Sun et al., "Accelerating Multimodal Large Language Models via
Dynamic Visual-Token Exit and the Empirical Findings"; official code DoubtedSteam/DyVTE).

DyVTE's finding: after some layer the text tokens have absorbed what they need from the image,
and the visual tokens can leave the sequence with little quality loss and a large speed-up.
This guard removes them after decoder layer `layer` (the mechanics are in
`lvlm_guard.token_exit_hooks`): layers <= `layer` run on the full sequence, later layers and
their KV cache on the text tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvlm_guard.edits import InterventionPlan, TokenExit
from lvlm_guard.errors import InterventionConfigError
from lvlm_guard.methods.base import Intervention, register_method
from lvlm_guard.models.base import ModelSpec


@register_method
@dataclass(frozen=True)
class VisualTokenExit(Intervention):
    name = "exit"

    layer: int = 16  # middle of LLaVA-1.5-7B's 32 layers (issue 5: exits at 8/12/16 benchmarked)

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        if not 0 <= self.layer < spec.num_layers:
            raise InterventionConfigError(
                f"exit: layer {self.layer} does not exist; the model has layers 0..{spec.num_layers - 1}"
            )
        return InterventionPlan(token_exit=TokenExit(self.layer))
