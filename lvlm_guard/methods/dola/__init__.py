"""DoLa: Decoding by Contrasting Layers (Chuang et al., ICLR 2024; official code voidism/DoLa).

transformers 5 no longer runs DoLa in core: `generate(dola_layers=...)` now loads the hub repo
transformers-community/dola as remote code (generation/utils.py:151 and :2536-2541 of 5.25),
which needs the hub and `trust_remote_code`, and replaces the whole decoding loop, so it would not
compose with the other guards. This guard computes the same contrast inside the model's forward
instead (`contrast.py`): pre-hooks on the decoder layers keep the candidate layers' hidden states,
and a forward hook replaces the logits with DoLa's scores, so any decoding loop (greedy, sampling,
`guard.generate`, plain `model.generate`) reads them.

Defaults:
- layers "low" (the official README.md:54 runs LLaMA-7B with `0,2,...,14` as candidates and 32
  as the mature layer, i.e. transformers' "low" bucket); "high" and explicit layers by spec.
- relative_top 0.1 (gsm8k_eval.py:241, tfqa_eval.py:142 `--relative_top 0.1`).
- repetition_penalty 1.2 (gsm8k_eval.py:301-302, tfqa_eval.py:198-199: the DoLa modes' default),
  applied after the contrast, as the official loop does (utils.py:2708 `logits_processor(input_ids,
  next_token_logits)`), by `repetition.py`: transformers' rule, blind to left padding.
- early_exit_norm False: the official early exit is `lm_head(hidden_states[layer])` without the final
  norm (modeling_llama.py:702; the hidden states are collected before `self.norm`, :556 vs :594), and
  transformers' port does the same. `early_exit_norm=true` applies the final norm first (the
  "logit lens" reading).

Composition: attention guards edit the forward DoLa reads (both the final and the early layers).
Listed with `vcd`, put `dola` before `vcd` (its logits hook then runs on both of VCD's branches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lvlm_guard.engine.edits import InterventionPlan
from lvlm_guard.errors import InputMismatchError, InterventionConfigError
from lvlm_guard.methods.base import Intervention, check_layers, register_method
from lvlm_guard.methods.dola.contrast import candidate_layers, dola_contrast, jensen_shannon
from lvlm_guard.methods.dola.repetition import RepetitionPenalty
from lvlm_guard.methods.settings import LAYER, Choice, Range
from lvlm_guard.models.base import ModelSpec

__all__ = ["DoLa", "candidate_layers", "dola_contrast", "jensen_shannon"]


@register_method
@dataclass(frozen=True)
class DoLa(Intervention):
    name = "dola"
    bounds: ClassVar = {
        "layers": Choice(("low", "high")),
        "explicit_layers": LAYER,
        "relative_top": Range(0, 1, low_open=True),
        "repetition_penalty": Range(0, low_open=True),
    }

    layers: str = "low"  # README.md:54: candidates 0,2,...,14 of LLaMA-7B's 32 = the "low" bucket
    explicit_layers: tuple[int, ...] | None = None  # hidden-state indices (0 = embeddings); wins over `layers`
    relative_top: float = 0.1  # gsm8k_eval.py:241 --relative_top 0.1
    repetition_penalty: float | None = 1.2  # gsm8k_eval.py:301-302 (DoLa mode default); None: off
    early_exit_norm: bool = False  # modeling_llama.py:702: lm_head on the raw hidden state

    def candidates(self, spec: ModelSpec, tied_embeddings: bool = False) -> tuple[int, ...]:
        if self.explicit_layers is not None:
            if not self.explicit_layers:
                raise InterventionConfigError("dola: explicit_layers is empty")
            return check_layers("dola", self.explicit_layers, spec)
        return candidate_layers(self.layers, spec.num_layers, tied_embeddings)

    def plan(self, spec: ModelSpec) -> InterventionPlan:
        self.candidates(spec)  # validates explicit layers before anything is attached
        return InterventionPlan()

    def on_attach(self, guard) -> None:
        tied = bool(getattr(guard.model.config.get_text_config(), "tie_word_embeddings", False)) or bool(
            getattr(guard.model.config, "tie_word_embeddings", False)
        )
        LayerContrast(guard, self.candidates(guard.adapter.spec, tied), self).install()

    def logits_processor(self, guard, inputs: dict):
        if self.repetition_penalty is None or self.repetition_penalty == 1:
            return None
        return RepetitionPenalty(self.repetition_penalty, guard.processor.tokenizer.pad_token_id)


class LayerContrast:
    """Owns DoLa's hooks on one guard's model: candidate hidden states in, logits out."""

    def __init__(self, guard, layers: tuple[int, ...], config: DoLa) -> None:
        self.guard = guard
        self.layers = layers
        self.config = config
        self.hidden: dict[int, torch.Tensor] = {}  # candidate -> [b, q, D] of the forward in flight
        self.capturing = False

    def install(self) -> None:
        model, own = self.guard.model, self.guard.own_hook
        own(model.register_forward_pre_hook(torch.compiler.disable(self.before)))
        for layer in self.layers:
            own(
                self.guard.adapter.decoder_layers[layer].register_forward_pre_hook(self.keeper(layer), with_kwargs=True)
            )
        own(model.register_forward_hook(torch.compiler.disable(self.after)))

    def before(self, module, args) -> None:
        self.hidden.clear()
        self.capturing = self.guard.state.active

    def keeper(self, layer: int):
        def keep(module, args, kwargs) -> None:
            if self.capturing:  # the input of decoder layer j is hidden_states[j] (0: the embeddings)
                self.hidden[layer] = args[0] if args else kwargs["hidden_states"]

        return torch.compiler.disable(keep)

    def after(self, module, args, output):
        if not self.capturing:
            return None
        self.capturing = False
        logits = output.logits  # [b, q_out, V]: logits_to_keep may keep only the last position
        rows, q_out = logits.shape[0], logits.shape[1]
        hidden = [self.hidden.pop(layer) for layer in self.layers]
        if any(h.shape[0] != rows for h in hidden):
            raise InputMismatchError(
                f"dola: the logits have {rows} rows but the layers' hidden states {hidden[0].shape[0]};"
                " list dola before vcd in the guard spec"
            )
        adapter = self.guard.adapter
        head = self.guard.model.get_output_embeddings()
        norm = adapter.language_model.norm if self.config.early_exit_norm else None
        premature = torch.stack(
            [head((norm(h) if norm is not None else h)[:, -q_out:].to(head.weight.device)) for h in hidden]
        )  # [C, b, q_out, V]
        scores, _ = dola_contrast(logits, premature.to(logits.device), self.config.relative_top)
        output.logits = scores
        return output
