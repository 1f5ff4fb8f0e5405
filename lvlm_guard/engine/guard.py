"""Attach, disable, detach: the object that owns every hook an intervention needs.

    guard = attach(model, processor, [PAI(alpha=0.5)])
    guard.generate(images=[img], prompts=["Describe the image."])
    with guard.disabled(): ...     # same model, no intervention
    guard.detach()                 # model exactly as before

While attached, plain `model.generate(**processor(...))` runs with the attention, head-output
and hidden-state edits too; decoding-time processors (PAI's contrastive refinement) come only
through `guard.generate` or `guard.logits_processors(prompts)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from lvlm_guard.engine.attention import (
    DEFAULT_PATHS,
    GUARDED,
    LAYER_ATTR,
    FastPaths,
    KernelHealth,
    LayerAttention,
    register_guarded_attention,
)
from lvlm_guard.engine.cache_compat import forward_cache
from lvlm_guard.engine.edits import HiddenStateEdit, InterventionPlan
from lvlm_guard.engine.inputs import ImageLike, images_per_prompt
from lvlm_guard.engine.state import GuardState
from lvlm_guard.engine.taps import Taps
from lvlm_guard.errors import GuardStateError, InputMismatchError, InterventionConfigError
from lvlm_guard.methods.base import Intervention
from lvlm_guard.models import ModelAdapter, adapter_for

MODEL_ATTR = "_lvlm_guard"  # set on the model while a guard is attached


@dataclass
class GenerationOutput:
    texts: list[str]
    token_ids: list[list[int]]  # generated tokens only, padding stripped
    taps: Taps | None = None


class Guard:
    """Owns the interventions' hooks on one model; every hook is removed by `detach`."""

    def __init__(
        self, model: nn.Module, processor, interventions: Sequence[Intervention], paths: FastPaths = DEFAULT_PATHS
    ) -> None:
        if getattr(model, MODEL_ATTR, None) is not None:
            raise GuardStateError("a guard is already attached to this model; detach it first")
        if isinstance(interventions, (str, Intervention)):
            hint = (
                f"lg.parse_guard_spec({interventions!r})" if isinstance(interventions, str) else f"[{interventions!r}]"
            )
            raise InterventionConfigError(
                f"interventions must be a list of guards, got {type(interventions).__name__} {interventions!r}; "
                f"pass {hint}"
            )
        for item in interventions:
            if not isinstance(item, Intervention):
                raise InterventionConfigError(
                    f"not an intervention: {item!r} ({type(item).__name__}); use lg.PAI(), lg.VAR(), ... "
                    "or lg.parse_guard_spec('pai,var')"
                )
        self.model = model
        self.processor = processor
        self.adapter: ModelAdapter = adapter_for(model)
        # each config with its per-model preset filled in from the loaded model's family (methods/base.py)
        self.interventions = [item.for_family(self.adapter.family) for item in interventions]
        self.state = GuardState()
        if not isinstance(paths, FastPaths):
            raise InterventionConfigError(f"paths must be a lvlm_guard.FastPaths, got {type(paths).__name__}")
        self.paths = paths  # which fast form of each edit serves (attention.FastPaths), fixed for this guard
        self.kernel_health = KernelHealth()
        self.plan = InterventionPlan()
        for item in self.interventions:
            self.plan = self.plan.merge(item.plan(self.adapter.spec))
        self._handles: list = []
        self._attached = False
        self._original_attn: str | None = None
        self._prefill_handles: list = []  # hooks of `prefill_only` hidden-state edits, while present

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    def attach(self) -> Guard:
        if self._attached:
            raise GuardStateError("this guard is already attached")
        text_config = self.adapter.text_config
        original = text_config._attn_implementation
        if original not in GUARDED:
            raise GuardStateError(
                f"attention implementation {original!r} is not supported; load the model with"
                " attn_implementation='sdpa' (default) or 'eager'"
            )
        register_guarded_attention()
        setattr(self.model, MODEL_ATTR, self)
        try:
            for item in self.interventions:
                item.on_attach(self)
            self._original_attn = original
            self.model.set_attn_implementation({"text_config": GUARDED[original]})
            spec = self.adapter.spec
            for layer in range(spec.num_layers):
                edits = self.plan.attention.get(layer, [])
                head_edits = self.plan.head_outputs.get(layer, [])
                layer_attention = LayerAttention(
                    layer, edits, self.state, spec.num_heads, head_edits, self.paths, self.kernel_health
                )
                setattr(self.adapter.attention(layer), LAYER_ATTR, layer_attention)
            # run eagerly: compiled, it is a frame of its own whose guards are checked on every
            # decoding step (~0.45 ms of host time in a CPU trial), for a hook that returns at once there
            on_forward = torch.compiler.disable(self._on_model_forward)
            self._handles.append(self.model.register_forward_pre_hook(on_forward, with_kwargs=True))
            self._handles.extend(self._add_hidden_state_hooks(prefill_only=False))
            if self.plan.token_exit is not None:  # the method brings its hooks (the engine knows only TokenExit)
                token_exit = self.plan.token_exit
                exit_hooks = token_exit.hooks(token_exit.layer, self.adapter, self.state, token_exit.decide)
                self._handles.extend(exit_hooks.install(self.model))
        except BaseException:
            self._remove_hooks()
            raise
        self._attached = True
        return self

    def detach(self) -> None:
        """Remove every hook and restore the attention implementation; the model is as before."""
        if not self._attached:
            raise GuardStateError("this guard is not attached")
        self._remove_hooks()
        self._attached = False

    def own_hook(self, handle) -> None:
        """Keep the handle of a hook a method registers itself in `on_attach` (PAINT's hooks on the
        vision tower): `detach`, or a failed `attach`, removes it with the guard's own."""
        self._handles.append(handle)

    def _remove_hooks(self) -> None:
        self._set_prefill_hooks(False)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer in range(self.adapter.spec.num_layers):
            module = self.adapter.attention(layer)
            if hasattr(module, LAYER_ATTR):
                delattr(module, LAYER_ATTR)
        if self._original_attn is not None:
            self.model.set_attn_implementation({"text_config": self._original_attn})
            self._original_attn = None
        if getattr(self.model, MODEL_ATTR, None) is self:
            delattr(self.model, MODEL_ATTR)
        self.state.set_image_keys(None)
        self.state.prompt_ids = None

    def _set_prefill_hooks(self, present: bool) -> None:
        """Install the `prefill_only` hidden-state hooks for a multi-token forward, remove them
        for a decoding step (see `HiddenStateEdit`)."""
        if present == bool(self._prefill_handles):
            return
        if present:
            self._prefill_handles = self._add_hidden_state_hooks(prefill_only=True)
            return
        for handle in self._prefill_handles:
            handle.remove()
        self._prefill_handles.clear()

    def _add_hidden_state_hooks(self, prefill_only: bool) -> list:
        """Hooks for the plan's hidden-state edits whose `prefill_only` is as given; their handles."""
        handles = []
        for layer, edits in self.plan.hidden_states.items():
            chosen = [edit for edit in edits if edit.prefill_only == prefill_only]
            if chosen:
                hook = self._hidden_state_hook(layer, chosen)
                handles.append(self.adapter.decoder_layers[layer].register_forward_hook(hook))
        return handles

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the same model with every intervention off (bit-identical to no guard)."""
        previous = self.state.enabled
        self.state.enabled = False
        try:
            yield
        finally:
            self.state.enabled = previous

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """For the guard's own auxiliary forwards: no edits, and the prompt state is left alone."""
        self.state.suspended += 1
        try:
            yield
        finally:
            self.state.suspended -= 1

    @contextmanager
    def tap(
        self,
        attention_layers: Sequence[int] | None = None,
        hidden_layers: Sequence[int] | None = None,
        prefill_only: bool = True,
    ) -> Iterator[Taps]:
        """Record attention maps and hidden states of the given layers (None: none, 'all' via range)."""
        num_layers = self.adapter.spec.num_layers
        taps = Taps(
            attention_layers=frozenset(attention_layers or ()),
            hidden_layers=frozenset(hidden_layers or ()),
            prefill_only=prefill_only,
        )
        for layer in taps.attention_layers:
            if not 0 <= layer < num_layers:
                raise InterventionConfigError(f"tap: attention layer {layer} does not exist (0..{num_layers - 1})")
        for layer in taps.hidden_layers:
            if not 0 <= layer <= num_layers:
                raise InterventionConfigError(f"tap: hidden-state index {layer} does not exist (0..{num_layers})")
        handles = [self._hidden_tap_hook(taps, layer) for layer in sorted(taps.hidden_layers)]
        previous = self.state.taps
        self.state.taps = taps
        try:
            yield taps
        finally:
            self.state.taps = previous
            for handle in handles:
                handle.remove()

    # --- hooks ---------------------------------------------------------------------------------
    def _on_model_forward(self, module, args, kwargs):
        """Before each multi-token forward: record which cache slots hold image tokens.

        A forward whose tokens extend the last prompt (a recomputation without cache of the
        prompt plus generated tokens) keeps that prompt, so "generating" rows stay the same rows.
        """
        if self.state.suspended:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        tokens = input_ids.shape[1] if input_ids is not None else embeds.shape[1] if embeds is not None else None
        self._set_prefill_hooks(tokens != 1)
        if input_ids is None or input_ids.shape[1] == 1:
            return None
        past = forward_cache(kwargs)
        seen = int(past.get_seq_length()) if past is not None else 0
        state = self.state
        image_keys = self.adapter.image_token_mask(input_ids)
        if seen:
            earlier = state.image_keys_for(input_ids.shape[0], seen, input_ids.device)
            image_keys = torch.cat([earlier, image_keys], dim=1)
        new_prompt = not seen and not _extends(input_ids, state.prompt_ids)
        if new_prompt:
            state.prompt_ids = input_ids
        state.query_offset = seen
        state.set_image_keys(image_keys)
        if new_prompt and state.active:
            mask = kwargs.get("attention_mask")
            if isinstance(mask, dict):  # one mask per layer type (Qwen2-VL's static-cache generate): the full one
                mask = mask.get("full_attention", next(iter(mask.values()), None))
            for item in self.interventions:
                item.on_prefill(self, input_ids, mask)
        return None

    def _hidden_state_hook(self, layer: int, edits: list[HiddenStateEdit]):
        state = self.state

        def hook(module, args, output):
            if not state.active:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            for edit in edits:
                hidden = edit.fn(layer, state, hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def _hidden_tap_hook(self, taps: Taps, index: int):
        layers = self.adapter.decoder_layers
        state = self.state
        if index < len(layers):

            def pre_hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                if not state.suspended and taps.wants_hidden(index, hidden.shape[1]):
                    taps.record_hidden(index, hidden)

            return layers[index].register_forward_pre_hook(pre_hook, with_kwargs=True)

        def post_hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if not state.suspended and taps.wants_hidden(index, hidden.shape[1]):
                taps.record_hidden(index, hidden)

        return layers[index - 1].register_forward_hook(post_hook)

    # --- generation ----------------------------------------------------------------------------
    def prepare(self, images, prompts: Sequence[str]):
        """Processor inputs for a left-padded batch, built with the family's chat template."""
        per_prompt = images_per_prompt(images, prompts)
        texts = [self.adapter.chat_prompt(self.processor, p, len(imgs)) for p, imgs in zip(prompts, per_prompt)]
        return self.adapter.left_padded_inputs(self.processor, per_prompt, texts).to(self.device)

    def logits_processors(self, prompts: Sequence[str]) -> list:
        """Decoding-time processors of the enabled interventions, for this batch of prompts."""
        if not self.state.active:
            return []
        found = (item.logits_processor(self, {"prompts": list(prompts)}) for item in self.interventions)
        return [p for p in found if p is not None]

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[ImageLike | Sequence[ImageLike] | None] | ImageLike | None,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        taps: Taps | bool | None = None,
        **generate_kwargs,
    ) -> GenerationOutput:
        """Guarded generation for a batch of (images, prompt) pairs.

        `taps=True` records attention maps and hidden states of every layer at prefill;
        a `Taps` object chooses layers. Extra keyword arguments go to `model.generate`
        (e.g. `cache_implementation="static"`).
        """
        if not self._attached:
            raise GuardStateError("this guard is detached; attach a new one")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputMismatchError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        inputs = self.prepare(images, prompts)
        self.state.prompt_ids = None  # a new conversation, even if it extends the last one
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        tokenizer = self.processor.tokenizer
        processors = self.logits_processors(prompts)
        if processors:
            generate_kwargs["logits_processor"] = [*generate_kwargs.get("logits_processor", []), *processors]
        tap_context = self._taps_context(taps)
        with tap_context as recorded:
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
                **generate_kwargs,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        special = {tokenizer.pad_token_id, tokenizer.eos_token_id}
        token_ids = [[t for t in row if t not in special] for row in new_tokens.tolist()]
        texts = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return GenerationOutput(texts=texts, token_ids=token_ids, taps=recorded)

    def _taps_context(self, taps: Taps | bool | None):
        if taps is None or taps is False:
            return nullcontext()
        if taps is True:
            n = self.adapter.spec.num_layers
            return self.tap(attention_layers=range(n), hidden_layers=range(n + 1))
        return self.tap(sorted(taps.attention_layers), sorted(taps.hidden_layers), taps.prefill_only)


def _extends(input_ids: torch.Tensor, prompt_ids: torch.Tensor | None) -> bool:
    return (
        prompt_ids is not None
        and prompt_ids.shape[0] == input_ids.shape[0]
        and input_ids.shape[1] > prompt_ids.shape[1]
        and prompt_ids.device == input_ids.device
        and bool(torch.equal(input_ids[:, : prompt_ids.shape[1]], prompt_ids))
    )


def attach(
    model: nn.Module, processor, interventions: Sequence[Intervention] = (), paths: FastPaths = DEFAULT_PATHS
) -> Guard:
    """Attach `interventions` (composed in order) to `model` and return the guard. `paths` chooses
    the fast forms of the edits (`FastPaths`: fused decoding kernel, fused score_mods); the default
    is what the benchmarks justify."""
    return Guard(model, processor, interventions, paths).attach()
