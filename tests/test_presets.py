"""Per-model presets (methods/base.py): chosen from the loaded model's family, named, overridable, listed."""

from __future__ import annotations

import dataclasses

import pytest
from tiny_families import FAMILIES
from tiny_models import tiny_llava

import lvlm_guard as lg
from lvlm_guard.cli import main
from lvlm_guard.methods import method_class, method_presets
from lvlm_guard.models import ModelSpec


@pytest.mark.parametrize("name", lg.available_methods())
def test_every_preset_names_real_fields_left_unset_by_default(name):
    cls = method_class(name)
    if not cls.presets:
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert fields["preset"].default == "auto"
    for preset in cls.presets.values():
        assert preset.source and preset.values
        for key in preset.values:
            assert fields[key].default is None, f"{name}.{key}: a preset field must default to None"
    assert set(cls.family_presets.values()) <= set(cls.presets)
    config = cls()
    for family in ("llava", "llava_next", "qwen2_vl", "idefics3", None):
        filled = config.for_family(family)
        assert all(getattr(filled, key) is not None for p in cls.presets.values() for key in p.values)
        assert filled.for_family("llava") == filled  # filled once, kept


def test_pai_alpha_follows_the_family_and_an_explicit_value_wins():
    assert lg.PAI().for_family("llava").alpha == 0.5  # the paper's LLaVA-1.5 setting
    assert lg.PAI().for_family("qwen2_vl").alpha == 0.2  # no paper value: the repo's README
    assert lg.PAI(preset="repo").for_family("llava").alpha == 0.2
    assert lg.PAI(preset="paper_llava15").for_family("idefics3").alpha == 0.5
    assert lg.PAI(alpha=0.3).for_family("llava").alpha == 0.3
    (pai,) = lg.parse_guard_spec("pai:preset=repo:gamma=none")
    assert pai.preset == "repo" and pai.for_family("llava").alpha == 0.2
    with pytest.raises(lg.InterventionConfigError, match="unknown preset 'paper'"):
        lg.PAI(preset="paper")
    (edit,) = lg.PAI(gamma=None, start_layer=0).plan(ModelSpec(1, 4, 2, 8, 32)).attention[0]
    assert edit.decode_kernel.alpha == 0.2  # a plan made without a model: the default preset


def test_a_guard_fills_the_preset_from_the_loaded_models_family():
    model, processor = tiny_llava()
    for given, alpha in ((lg.PAI(gamma=None), 0.5), (lg.PAI(preset="repo", gamma=None), 0.2)):
        guard = lg.attach(model, processor, [given])
        try:
            (filled,) = guard.interventions
            assert filled.alpha == alpha
            assert guard.adapter.attention(2)._lvlm_guard_attention.edits[0].decode_kernel.alpha == alpha
        finally:
            guard.detach()
    model, processor = FAMILIES["qwen2_vl"]()
    guard = lg.attach(model, processor, [lg.PAI(gamma=None), lg.VHR()])
    try:
        pai, vhr = guard.interventions
        assert pai.alpha == 0.2 and vhr.early_layers == (1,)
    finally:
        guard.detach()


def test_lvlm_guard_list_shows_the_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in lg.available_methods():
        for preset, values, families in method_presets(name):
            line = next(line for line in out.splitlines() if f"{name}:preset={preset} " in line)
            assert all(f in line for f in families) and values.source in line
    assert "pai:preset=paper_llava15  [llava]  alpha=0.5" in out
    assert "vhr:preset=paper_instructblip  [by name only]" in out
