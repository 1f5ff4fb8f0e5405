"""`lvlm_guard.engine.kernels.triton_launch.CachedLaunch`: a cached launch only where Triton would reuse the
same compiled kernel; its own launch path everywhere else."""

from __future__ import annotations

import pytest
import torch

from lvlm_guard.engine.kernels import triton_launch
from lvlm_guard.engine.kernels.triton_launch import CachedLaunch


class _Compiled:
    """A compiled kernel that records its direct launches."""

    def __init__(self, log: list) -> None:
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("direct", grid, args))


class _Jitted:
    """A jitted kernel that records Triton-path launches and hands out one compiled kernel each."""

    def __init__(self) -> None:
        self.log: list = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log)

        return launch


@pytest.fixture
def launcher(monkeypatch):
    monkeypatch.setattr(triton_launch, "SUPPORTED", True)
    monkeypatch.setattr(triton_launch, "ENABLED", True)
    cached = CachedLaunch(_Jitted())
    cached.device_types = ("cpu",)
    return cached


def _call(launcher, tensors, ints, constexprs=None, options=None):
    launcher((4, 1), tensors, ints, (0.5,), constexprs or {"BLOCK": 64}, options or {})
    return [entry[0] for entry in launcher.kernel.log]


def test_a_repeated_specialisation_launches_directly_with_every_argument_in_order(launcher):
    x, y = torch.zeros(64), torch.zeros(64, dtype=torch.bool)
    assert _call(launcher, (x, y), (128, 1, 640)) == ["triton"]
    assert _call(launcher, (x, y), (256, 1, 656)) == ["triton", "direct"]  # same classes mod 16
    kind, grid, args = launcher.kernel.log[-1]
    assert grid == (4, 1, 1) and args == (x, y, 256, 1, 656, 0.5, 64)


@pytest.mark.parametrize(
    "change",
    ["int residue", "int one", "int zero", "dtype", "alignment", "constexpr", "option"],
)
def test_anything_triton_specialises_on_goes_through_triton_again(launcher, change):
    x = torch.zeros(64)
    tensors, ints, constexprs, options = (x,), (128, 2, 640), {"BLOCK": 64}, {"num_warps": 4}
    _call(launcher, tensors, ints, constexprs, options)
    if change == "int residue":
        ints = (128, 2, 641)
    elif change == "int one":
        ints = (128, 1, 640)
    elif change == "int zero":
        ints = (128, 0, 640)
    elif change == "dtype":
        tensors = (x.half(),)
    elif change == "alignment":
        tensors = (x[1:],)  # 4 bytes past a 16-byte boundary
    elif change == "constexpr":
        constexprs = {"BLOCK": 128}
    else:
        options = {"num_warps": 8}
    assert _call(launcher, tensors, ints, constexprs, options) == ["triton", "triton"]


def test_64_bit_integers_and_other_devices_are_never_cached(launcher):
    x = torch.zeros(64)
    _call(launcher, (x,), (2**31, 1))
    _call(launcher, (x,), (2**31, 1))
    assert [entry[0] for entry in launcher.kernel.log] == ["triton", "triton"]
    launcher.device_types = ("cuda",)
    _call(launcher, (x,), (16, 1))
    assert _call(launcher, (x,), (16, 1))[-2:] == ["triton", "triton"]


def test_a_failing_direct_launch_falls_back_to_triton_for_good(launcher):
    x = torch.zeros(64)
    _call(launcher, (x,), (16, 1))

    class Broken:
        def __getitem__(self, grid):
            raise TypeError("launcher takes 9 arguments")

    launcher.compiled = {key: Broken() for key in launcher.compiled}
    launcher.exact = {key: Broken() for key in launcher.exact}
    with pytest.warns(UserWarning, match="direct Triton launch failed"):
        assert _call(launcher, (x,), (16, 1)) == ["triton", "triton"]
    assert _call(launcher, (x,), (16, 1)) == ["triton", "triton", "triton"]
    assert launcher.failed and not launcher.compiled and not launcher.exact


def test_an_exact_repeat_launches_directly_without_classifying_its_integers(launcher, monkeypatch):
    x = torch.zeros(64)
    _call(launcher, (x,), (128, 2, 640))
    _call(launcher, (x,), (144, 2, 656))  # a new length of the same classes: from the class cache
    monkeypatch.setattr(CachedLaunch, "_key", staticmethod(lambda *args: pytest.fail("classified again")))
    assert _call(launcher, (x,), (144, 2, 656)) == ["triton", "direct", "direct"]


def test_the_exact_cache_is_bounded(launcher, monkeypatch):
    monkeypatch.setattr(CachedLaunch, "max_exact", 3)
    x = torch.zeros(64)
    for length in range(16, 16 * 8, 16):
        _call(launcher, (x,), (length, 2))
    assert len(launcher.exact) <= 3 and len(launcher.compiled) == 1
