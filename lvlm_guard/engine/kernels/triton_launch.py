"""Launching a jitted Triton kernel again without Triton's per-call bookkeeping.

Why: eager (dynamic-cache) decoding is bound by host time, and a guarded layer launches our
kernel in place of SDPA. Triton's `JITFunction.run` binds and specializes every argument, builds
a cache key (including `str()` of the compile options) and looks the kernel up on every call: on
the H200's host a launch cost ~30 us more than the SDPA call it replaces, ~1 ms per decoding step
over 30 layers (results/decode_kernel/README.md). `CachedLaunch` keys the compiled kernel by
what Triton specializes on and, after the first call of a key, launches it through the compiled
kernel's own launcher (`CompiledKernel[grid](*args)`, the call `JITFunction.run` ends with).

Exactness: Triton compiles a kernel for the constexpr values, the launch options, each tensor's
dtype and 16-byte alignment, and each integer's class (1, a multiple of 16, or other; 32 or 64
bit). The key here is finer than that (an integer's residue mod 16, 0 and 1 apart), so a call
never reaches a kernel compiled under other assumptions. Used for eager launches only (under
`torch.compile` the kernels go through `wrap_triton`), never by Triton's CPU interpreter.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

#: off: every launch goes through `JITFunction.run` (the GPU tests compare both)
ENABLED = True
_INT32 = 2**31


def _supported() -> bool:
    """From Triton 3.4 on, the compiled launcher takes every argument, constexprs included."""
    try:
        import triton
    except ImportError:
        return False
    major, minor = (int(part) for part in triton.__version__.split(".")[:2])
    return (major, minor) >= (3, 4)


SUPPORTED = _supported()


class CachedLaunch:
    """A jitted kernel whose parameters are, in order: tensors, ints, floats, then constexprs."""

    #: where launches are cached (Triton's CPU interpreter re-reads its arguments on every call)
    device_types = ("cuda",)

    #: exact argument signatures remembered (a new key length each decoding step adds one)
    max_exact = 4096

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.compiled: dict[tuple, object] = {}  # by what Triton specializes on (`_key`)
        #: by the exact integers: the same lookup without classifying ~30 integers per launch
        #: (on CPU the classification was ~40% of the eager launch path's host time)
        self.exact: dict[tuple, object] = {}
        self.failed = False

    def __call__(
        self,
        grid: tuple[int, int],
        tensors: Sequence[torch.Tensor],
        ints: Sequence[int],
        floats: Sequence[float],
        constexprs: dict,
        options: dict,
    ) -> None:
        device = tensors[0].device
        compiled = key = exact = None
        if ENABLED and SUPPORTED and not self.failed and device.type in self.device_types:
            layout = tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors])
            exact = (device.index, layout, tuple(ints), tuple(constexprs.items()), tuple(options.items()))
            compiled = self.exact.get(exact)
            if compiled is None:
                key = self._key(exact)
                compiled = self.compiled.get(key) if key is not None else None
                if compiled is not None:
                    self._remember(exact, compiled)
        if compiled is not None:
            try:
                compiled[(grid[0], grid[1], 1)](*tensors, *ints, *floats, *constexprs.values())
                return
            except Exception as error:  # a Triton whose launcher differs: its own path serves
                self.failed, key = True, None
                self.compiled.clear()
                self.exact.clear()
                warnings.warn(f"lvlm_guard: direct Triton launch failed ({error!r}); using Triton's", stacklevel=2)
        compiled = self.kernel[grid](*tensors, *ints, *floats, **constexprs, **options)
        if key is not None:
            compiled = self.compiled[key] = compiled.result() if hasattr(compiled, "result") else compiled
            self._remember(exact, compiled)

    def _remember(self, exact: tuple, compiled) -> None:
        if len(self.exact) >= self.max_exact:
            self.exact.clear()
        self.exact[exact] = compiled

    @staticmethod
    def _key(exact: tuple) -> tuple | None:
        """What the compiled kernel depends on, from the exact signature `(device index, each
        tensor's dtype and 16-byte alignment, ints, constexprs, options)`: each integer by its
        class. None: launch through Triton (e.g. 64-bit integers)."""
        index, layout, ints, constexprs, options = exact
        if max(ints) >= _INT32 or min(ints) < 0:
            return None
        return index, layout, tuple(x - 16 if x < 2 else x % 16 for x in ints), constexprs, options
