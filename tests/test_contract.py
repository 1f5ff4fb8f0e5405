"""The contract: every registered guard x every supported family keeps the shared guarantees
(tests/contract.py), or refuses the family with one typed error. A new method is covered by being
registered; `SETTINGS` only makes a default that would edit nothing on a 4-layer random model act."""

from __future__ import annotations

import pytest
from contract import assert_shared_guarantees
from tiny_families import FAMILIES

import lvlm_guard as lg
from lvlm_guard.methods import method_class

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
