"""VCD: Visual Contrastive Decoding (Leng et al., CVPR 2024; official code DAMO-NLP-SG/VCD).

Each next token contrasts the model on the real image with the model on a diffusion-noised copy
(`noise.py`): `(1 + alpha) * l - alpha * l_noised`, kept only where the real image's own
probability is at least `beta` times its best one (`contrast.py`). The noised copy runs as extra
batch rows of the same forward, with its own rows of the KV cache (`branch.py`).

Defaults, from the official code: alpha 1 (experiments/eval/object_hallucination_vqa_llava.py:117
`--cd_alpha 1`), beta 0.1 (:118 `--cd_beta 0.1`; vcd_sample.py:143 falls back to 0.1 too;
cd_scripts/llava1.5_pope.bash:6 runs 0.2), noise step 500 of 1000 (:115 `--noise_step 500`),
seed 42 (:119 `--seed 42`, there the global torch seed).

Choices where the code leaves a question open:
- Decoding: the official scripts sample (do_sample=True, vcd_sample.py:161); `guard.generate`
  decodes greedily by default, and greedy takes the argmax of the same contrasted logits.
  Generation's logits processors (repetition penalty, PAI's image-free refinement) run after the
  contrast, as at vcd_sample.py:156.
- Composition: attention guards (PAI, VAR, VHR, PAINT) edit both branches. The official code has no
  attention edits; the noised branch is "the same model on a worse image", and editing one branch
  only would make the contrast measure the edit as well as the noise.
- Noise: drawn per picture from `seed` and the picture's content (see `noise.py`), not from the
  global generator, so a batch equals its prompts one by one and reruns agree.
- Static cache: not supported (it is allocated for the prompts' batch); a typed error says so.
- A text-only prompt has no image to noise: both halves are the same, and the contrast returns
  its logits cut by the plausibility constraint only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lvlm_guard.engine.edits import InterventionPlan
from lvlm_guard.methods.base import Intervention, register_method
from lvlm_guard.methods.settings import NONNEGATIVE, Range
from lvlm_guard.methods.vcd.branch import NoisedBranch
from lvlm_guard.methods.vcd.contrast import contrast_logits
from lvlm_guard.methods.vcd.noise import NUM_STEPS, add_diffusion_noise
from lvlm_guard.models.base import ModelSpec

__all__ = ["VCD", "add_diffusion_noise", "contrast_logits"]


@register_method
@dataclass(frozen=True)
class VCD(Intervention):
    name = "vcd"
    bounds: ClassVar = {
        "alpha": NONNEGATIVE,
        "beta": Range(0, 1, low_open=True),
        "noise_step": Range(0, NUM_STEPS - 1),
        "seed": NONNEGATIVE,
    }

    alpha: float = 1.0  # object_hallucination_vqa_llava.py:117 --cd_alpha 1
    beta: float = 0.1  # object_hallucination_vqa_llava.py:118 --cd_beta 0.1 (adaptive plausibility)
    noise_step: int = 500  # object_hallucination_vqa_llava.py:115 --noise_step 500 (of 1000 steps)
    seed: int = 42  # object_hallucination_vqa_llava.py:119 --seed 42

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        return InterventionPlan()  # no attention edits: VCD acts on the logits

    def on_attach(self, guard) -> None:
        NoisedBranch(guard, self.alpha, self.beta, self.noise_step, self.seed).install()
