"""The contract: every registered guard x every supported family keeps the shared guarantees
(tests/contract.py), or refuses the family with one typed error. A new method is covered by being
registered; `SETTINGS` only makes a default that would edit nothing on a 4-layer random model act."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from contract import IMAGES, PROMPTS, assert_shared_guarantees
from tiny_families import FAMILIES

import lvlm_guard as lg
from lvlm_guard.engine.edits import AttentionEdit, InterventionPlan
from lvlm_guard.methods import method_class
from lvlm_guard.methods.base import _METHODS, Intervention, register_method
from lvlm_guard.methods.settings import POSITIVE

#: settings under which each method really edits the tiny random models (their hidden states have
#: no sinks above the published tau, and their middle layer is 2); methods not listed use defaults
SETTINGS = {
    "var": {"tau": 2.0, "start_layer": 1, "rho": 1.0, "summ": 0.0, "last_layer": True},
    "exit": {"layer": 1},
}
#: guarantees a method does not claim, with the reason (keep this short)
NO_RECOMPUTE = {
    "exit": "image tokens leave at prefill: a cache-free forward over the grown sequence re-runs the exit on"
    " the generated tokens' prefix, which cached decoding never sees (tests/test_token_exit.py checks its own)",
}
NO_STATIC = {
    "exit": "its later layers hold fewer tokens than a static cache's fixed shape",
    "vcd": "its noised branch runs as extra batch rows, beyond the static cache allocated for the prompts",
}


@pytest.fixture(scope="module", params=[(f, impl) for f in FAMILIES for impl in ("sdpa", "eager")], ids=str)
def family(request):
    name, attn_implementation = request.param
    return name, *FAMILIES[name](attn_implementation=attn_implementation)


@pytest.mark.parametrize("method", lg.available_methods())
def test_every_guard_keeps_the_shared_guarantees_on_every_family(method, family):
    name, model, processor = family
    config = method_class(method)(**SETTINGS.get(method, {}))
    try:
        guard = lg.attach(model, processor, [config])
    except lg.InterventionConfigError as err:  # the method cannot work on this family: said so, clearly
        assert not hasattr(model, "_lvlm_guard"), "a refused attach left hooks behind"
        assert lg.adapter_for(model).family in str(err), f"the error does not name the family: {err}"
        pytest.skip(f"{method} refuses {name}: {err}")
    guard.detach()
    assert_shared_guarantees(
        model, processor, [config], recompute=method not in NO_RECOMPUTE, static=method not in NO_STATIC
    )


# --- adding a method: one class (in a real change, one folder under lvlm_guard/methods/) ------------
def test_a_new_method_is_one_registered_class_and_gets_the_contract(family):
    """What a new attention method touches: its own config and plan, `register_method`; nothing in
    the engine, the adapters or the shared tests. The example adds `log(1 + alpha)` to the scores of
    image keys at the generating rows of the last half of the layers, and keeps every guarantee."""
    @dataclass(frozen=True)
    class ImageBoost(Intervention):
        name = "example_image_boost"
        bounds: ClassVar = {"alpha": POSITIVE}
        alpha: float = 1.0  # image keys' weight grows by 1 + alpha before renormalisation

        def plan(self, spec):
            bias = lambda rows: rows.image_key_weights(torch.float32, math.log1p(self.alpha))  # noqa: E731
            layers = range(spec.num_layers // 2, spec.num_layers)
            return InterventionPlan(attention={layer: [AttentionEdit(logit_bias=bias)] for layer in layers})

    register_method(ImageBoost)
    try:
        assert "example_image_boost" in lg.available_methods()
        (config,) = lg.parse_guard_spec("example_image_boost:alpha=2")
        with pytest.raises(lg.InvalidSettingError, match="alpha must be > 0"):
            lg.parse_guard_spec("example_image_boost:alpha=-1")
        name, model, processor = family
        builder = lg.Guard(model, processor, [])
        inputs = builder.prepare(IMAGES, PROMPTS)
        with torch.no_grad():
            plain = model(**inputs).logits[:, -1]
            guard = lg.attach(model, processor, [config])
            try:
                edited = model(**builder.prepare(IMAGES, PROMPTS)).logits[:, -1]
            finally:
                guard.detach()
        assert not torch.allclose(plain, edited)  # it acts
        assert_shared_guarantees(model, processor, [config])
    finally:
        del _METHODS["example_image_boost"]
