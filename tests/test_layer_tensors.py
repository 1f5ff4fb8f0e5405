"""Per-layer tensors stacked into one: dict behaviour, and one compiled-graph input for all layers."""

from __future__ import annotations

import pytest
import torch
from test_guard import IMAGES, PROMPTS
from test_var import _sinky_var
from tiny_models import tiny_llava
from transformers import CompileConfig

import lvlm_guard as lg
from lvlm_guard.engine.layer_tensors import LayerTensors


def test_layer_tensors_behave_like_a_dict_and_restart_with_each_prompt():
    tensors = LayerTensors((2, 5, 7))
    first = torch.arange(6.0).view(2, 3)
    tensors[2] = first
    tensors[7] = first * 10
    assert tensors.get(5) is None and 5 not in tensors and len(tensors) == 2
    with pytest.raises(KeyError):
        tensors[5]
    assert torch.equal(tensors[2], first) and torch.equal(tensors.get(7), first * 10)
    assert list(tensors) == [2, 7] and torch.equal(torch.stack(tensors.values()), torch.stack([first, first * 10]))
    assert tensors.stack.shape == (3, 2, 3)
    tensors[2] = torch.ones(4, 3)  # the first layer of a new prompt (another batch): a new stack
    assert 7 not in tensors and tensors.stack.shape == (3, 4, 3)


def _decode_graph_inputs(guard_methods) -> int:
    """Inputs of the compiled static-cache decoding step with these interventions attached."""
    counts = []

    def backend(graph_module, example_inputs):
        counts.append(len(example_inputs))
        return graph_module.forward

    torch._dynamo.reset()  # a fresh compile: no shapes or ints made dynamic by an earlier one
    model, processor = tiny_llava()
    guard = lg.attach(model, processor, guard_methods(model))
    config = CompileConfig(fullgraph=True, backend=backend, mode=None)
    config._compile_all_devices = True  # compile on CPU too
    try:
        with torch.no_grad():
            model.generate(**guard.prepare(IMAGES, PROMPTS), max_new_tokens=3, do_sample=False,
                           cache_implementation="static", compile_config=config)  # fmt: skip
    finally:
        guard.detach()
    assert len(counts) == 1
    return counts[0]


@pytest.mark.parametrize(
    ("one_layer", "more_layers"),
    [
        (lambda m: [lg.VHR(explicit_layers=(3,))], lambda m: [lg.VHR(explicit_layers=(1, 2, 3))]),
        (lambda m: [lg.VAR(**{**vars(_sinky_var(m)), "end_layer": 2})], lambda m: [_sinky_var(m)]),
    ],
    ids=["vhr", "var"],
)
def test_a_compiled_decoding_step_takes_one_input_for_all_edited_layers(one_layer, more_layers):
    assert _decode_graph_inputs(one_layer) == _decode_graph_inputs(more_layers)
