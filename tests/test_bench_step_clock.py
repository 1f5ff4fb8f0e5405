"""The benchmark scripts' instruments: `bench_overhead.py`'s step clock (the statistics that carry
the eager speed figures, on made-up timestamps, and the clock on a real tiny generate) and
`host_cost_eager.py`'s attention timer."""

from __future__ import annotations

import pytest
import torch
from transformers import StoppingCriteriaList

from evals.speed import AttentionTimer, StepClock, step_statistics


def _clock(first: float, steps: list[float]) -> StepClock:
    clock = StepClock()
    clock.started = 100.0
    clock.stamps = [100.0 + first]
    for step in steps:
        clock.stamps.append(clock.stamps[-1] + step)
    return clock


def test_a_stall_in_part_of_a_run_moves_the_mean_not_the_median_step():
    quiet = _clock(0.05, [0.020] * 7)
    stalled = _clock(0.05, [0.020] * 4 + [0.100] * 3)  # the host stalls for the last 3 steps
    stats = step_statistics({"plain": [quiet, stalled]}, "plain", batch=2, new_tokens=8)
    assert stats["step_ms_median"] == pytest.approx(20.0)
    assert stats["first_token_ms_median"] == pytest.approx(50.0)
    assert stats["steady_tokens_per_s"] == pytest.approx(2 * 8 / (0.05 + 7 * 0.020))


def test_ratios_to_plain_pair_each_round_and_include_the_first_token():
    plain = [_clock(0.05, [0.020] * 7), _clock(0.05, [0.040] * 7)]  # round 2 on a slow host
    guarded = [_clock(0.10, [0.021] * 7), _clock(0.10, [0.042] * 7)]
    stats = step_statistics({"plain": plain, "vhr": guarded}, "vhr", batch=1, new_tokens=8)
    assert stats["step_ratio_to_plain_paired_median"] == pytest.approx(20 / 21)
    expected_rounds = [(0.05 + 7 * p) / (0.10 + 7 * g) for p, g in ((0.020, 0.021), (0.040, 0.042))]
    assert stats["steady_ratio_to_plain_paired_median"] == pytest.approx(sum(expected_rounds) / 2)
    assert stats["steady_ratio_to_plain_paired_median"] < stats["step_ratio_to_plain_paired_median"]
    assert step_statistics({"plain": plain}, "plain", 1, 8)["steady_ratio_to_plain"] == 1.0


def _tiny():
    from test_guard import IMAGES, PROMPTS
    from tiny_models import tiny_llava

    import lvlm_guard as lg

    model, processor = tiny_llava()
    return model, processor, lg.Guard(model, processor, []).prepare(IMAGES, PROMPTS)


def _generate(model, inputs, new_tokens: int, **kwargs) -> None:
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kwargs)


def test_the_clock_stamps_every_generated_token():
    model, _, inputs = _tiny()
    clock = StepClock()
    clock.started = 0.0
    _generate(model, inputs, 6, stopping_criteria=StoppingCriteriaList([clock]))
    assert len(clock.stamps) == 6 and len(clock.intervals()) == 5
    assert all(interval > 0 for interval in clock.intervals())


@pytest.mark.parametrize("guarded", [False, True])
def test_the_attention_timer_counts_each_decoding_call_once_and_restores_the_functions(guarded):
    from transformers import AttentionInterface

    import lvlm_guard as lg
    from lvlm_guard.engine import attention

    model, processor, inputs = _tiny()
    before = AttentionInterface._global_mapping["sdpa"], attention.guarded_attention_forward
    with AttentionTimer() as timer:
        guard = lg.attach(model, processor, [lg.PAI()]) if guarded else None
        _generate(model, inputs, 4)
        if guard is not None:
            guard.detach()
    layers = model.config.text_config.num_hidden_layers
    assert len(timer.calls_ns) == 3 * layers  # 3 decoding steps after the prefill, one call per layer
    assert (AttentionInterface._global_mapping["sdpa"], attention.guarded_attention_forward) == before
    assert AttentionInterface._global_mapping[attention.GUARDED["sdpa"]] is before[1]
