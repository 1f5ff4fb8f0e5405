"""The noised-image branch of VCD as extra batch rows: hooks on the model's forward.

Rows `b..2b-1` of every forward are the same prompts on the diffusion-noised images. Before a
forward (a pre-hook, registered ahead of the guard's own so that the guard sees the doubled batch),
every per-sequence and per-image tensor is concatenated with itself along its batch axis, and the
images enter as pre-encoded features of both branches, clean images first, then the noised ones
(`mm_encoder_outputs`, which every supported family's forward takes). transformers 5 `generate`
encodes the images itself before the prefill (`base_model.get_image_features`, generation/utils.py
`_prepare_multimodal_encoder_kwargs_for_generation`); the guard's wrapper of that method adds the
noised images' features there. Both branches run in one forward, the KV cache holds both (rows
`b..2b-1` are the noised branch's own keys and values). After the forward, logits `[2b, q, V]`
become the contrast `[b, q, V]` of the two halves (`contrast.contrast_logits`): generation sees
only that.

Whether a forward is doubled is decided once per cache: a prefill doubles when the guard is
active, a later step when the cache it continues already holds twice its rows, so disabling the
guard in the middle of a generation cannot mix the two layouts.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from lvlm_guard.engine.cache_compat import forward_cache
from lvlm_guard.errors import InputMismatchError, InterventionConfigError
from lvlm_guard.methods.vcd.contrast import contrast_logits
from lvlm_guard.methods.vcd.noise import add_diffusion_noise

#: forward arguments that have no batch axis (or are not tensors of the inputs)
_NOT_BATCHED = frozenset({"cache_position", "logits_to_keep", "cache", "past_key_values"})


@dataclass
class NoisedBranch:
    """Owns VCD's two forward hooks on one guard's model."""

    guard: object
    alpha: float
    beta: float
    noise_step: int
    seed: int
    doubled: bool = False  # whether the forward in flight was doubled

    in_forward: bool = False

    def install(self) -> None:
        model = self.guard.model
        base = model.base_model
        self.encode = base.get_image_features  # the class's bound method
        # transformers >= 5.2x forwards take pre-encoded image features (`mm_encoder_outputs`); older 5.x
        # ones (5.17 on the GPU machine) only pixels, which then go in doubled: clean, then noised
        self.pre_encoded = "mm_encoder_outputs" in inspect.signature(model.forward).parameters
        self.signature = inspect.signature(self.encode)
        self.encoder_arguments = frozenset(self.signature.parameters) - {"kwargs"}
        self.guard.own_hook(model.register_forward_pre_hook(torch.compiler.disable(self.before), with_kwargs=True))
        # always_call: a forward that raised still ends here, so `in_forward` never stays set
        after = torch.compiler.disable(self.after)
        self.guard.own_hook(model.register_forward_hook(after, with_kwargs=True, always_call=True))
        # an instance attribute over the method, with its signature: generate picks the arguments it
        # passes from `inspect.signature(get_image_features)`
        encode_for_generate = functools.wraps(self.encode)(lambda *a, **kw: self.encode_for_generate(*a, **kw))
        base.get_image_features = encode_for_generate
        self.guard.own_hook(_InstanceAttribute(base, "get_image_features"))

    def both_branches(self, **encoder_kwargs):
        """Image features of the clean images, then of their noised copies (one output)."""
        clean = self.encode(**encoder_kwargs)
        pixels = encoder_kwargs["pixel_values"]
        noised = self.encode(
            **{**encoder_kwargs, "pixel_values": add_diffusion_noise(pixels, self.noise_step, self.seed)}
        )
        features = clean.pooler_output
        if isinstance(features, torch.Tensor):
            clean.pooler_output = torch.cat([features, noised.pooler_output])
        else:  # one tensor per image (anyres, dynamic resolution)
            clean.pooler_output = type(features)([*features, *noised.pooler_output])
        return clean

    def encode_for_generate(self, *args, **kwargs):
        """`get_image_features` as generate calls it before the prefill: both branches while active."""
        if args:  # the families' own forwards pass (pixel_values, image_grid_thw, ...) by position
            bound = self.signature.bind_partial(*args, **kwargs).arguments
            kwargs = {**bound.pop("kwargs", {}), **bound}
        if self.in_forward or not self.guard.state.active or kwargs.get("pixel_values") is None:
            return self.encode(**kwargs)
        return self.both_branches(**kwargs)

    def _cache_rows(self, cache) -> int | None:
        """Rows the cache holds (None: empty or no cache)."""
        if cache is None or not int(cache.get_seq_length()):
            return None
        for layer in getattr(cache, "layers", ()):
            keys = getattr(layer, "keys", None)
            if keys is not None and keys.numel():
                return keys.shape[0]
        return None

    def before(self, module, args, kwargs):
        self.doubled = False
        self.in_forward = True
        try:
            return self._before(args, kwargs)
        except BaseException:
            self.in_forward = False
            raise

    def _before(self, args, kwargs):
        if args:  # generate and the guard pass keywords; a positional input_ids is moved there
            kwargs = {"input_ids": args[0], **kwargs}
            args = ()
        batch = _batch_size(kwargs)
        if batch is None:
            return None
        cache = forward_cache(kwargs)
        rows = self._cache_rows(cache)
        if rows is None:
            if not self.guard.state.active:
                return args, kwargs
            if getattr(cache, "max_batch_size", None) is not None or type(cache).__name__.startswith("Static"):
                raise InterventionConfigError(
                    "vcd: a static cache is allocated for the prompts' batch, and VCD's noised branch runs as"
                    " extra batch rows; use the dynamic cache (no cache_implementation='static')"
                )
        elif rows != 2 * batch:
            return args, kwargs
        self.doubled = True
        if kwargs.get("pixel_values") is not None and not self.pre_encoded:
            pixels = kwargs["pixel_values"]
            kwargs = {
                **kwargs,
                "pixel_values": torch.cat([pixels, add_diffusion_noise(pixels, self.noise_step, self.seed)]),
            }
        elif kwargs.get("pixel_values") is not None:  # a plain forward: encode both branches here
            encoder_kwargs = {k: v for k, v in kwargs.items() if k in self.encoder_arguments}
            images = self.both_branches(**encoder_kwargs)
            kwargs = {k: v for k, v in kwargs.items() if k != "pixel_values"}
            kwargs["mm_encoder_outputs"] = {**(kwargs.get("mm_encoder_outputs") or {}), "image": images}
        return args, {
            name: value if name == "pixel_values" else self._doubled(name, value) for name, value in kwargs.items()
        }

    def _doubled(self, name: str, value):
        if name in _NOT_BATCHED or not isinstance(value, torch.Tensor) or value.ndim == 0:
            return value
        if name == "position_ids" and value.ndim == 3:  # M-RoPE: [axes, b, q]
            return torch.cat([value, value], dim=1)
        return torch.cat([value, value])

    def after(self, module, args, kwargs, output):
        self.in_forward = False
        if not self.doubled or output is None:
            return None
        self.doubled = False
        logits = getattr(output, "logits", None)
        if logits is None:
            raise InputMismatchError("vcd: the model's output has no logits (call it with return_dict=True)")
        half = logits.shape[0] // 2
        contrasted = contrast_logits(logits[:half], logits[half:], self.alpha, self.beta)
        output.logits = contrasted  # a ModelOutput: the attribute and its dict entry
        return output


def _batch_size(kwargs: dict) -> int | None:
    for name in ("input_ids", "inputs_embeds"):
        value = kwargs.get(name)
        if value is not None:
            return value.shape[0]
    return None


class _InstanceAttribute:
    """A handle whose `remove()` deletes an instance attribute (the class's method shows again)."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name = owner, name

    def remove(self) -> None:
        self.owner.__dict__.pop(self.name, None)
