"""Per-layer tensors of one prompt (VAR's sink tokens, VHR's head scales) kept in one stacked tensor.

Why: a compiled static-cache decoding step takes every tensor it reads from Python state as a
graph input, and each CUDA-graph replay copies and checks every such input in Python (a few
microseconds each). One tensor per edited layer made that ~30 inputs per step; stacked, it is one,
and each layer's slice is taken inside the graph.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class LayerTensors:
    """A mapping `layer -> tensor` (same shape for every layer) backed by one `[layers, ...]` tensor.

    Writing the first layer starts a new stack (a new prompt); reading a layer not yet written
    gives None from `get`, KeyError from `[]`, as a dict would.
    """

    def __init__(self, layers: Sequence[int]) -> None:
        self.slots = {layer: slot for slot, layer in enumerate(layers)}
        self.first = layers[0]
        self.stack: torch.Tensor | None = None
        self.views: dict[int, torch.Tensor] = {}  # the written layers' slices of `stack`

    def __setitem__(self, layer: int, value: torch.Tensor) -> None:
        stale = self.stack is None or self.stack.shape[1:] != value.shape
        if layer == self.first or stale or self.stack.dtype != value.dtype or self.stack.device != value.device:
            self.stack = value.new_zeros((len(self.slots), *value.shape))
            self.views = {}
        slot = self.slots[layer]
        self.stack[slot] = value
        self.views[layer] = self.stack[slot]

    def get(self, layer: int, default: torch.Tensor | None = None) -> torch.Tensor | None:
        if layer not in self.views:
            return default
        return self[layer]

    def __getitem__(self, layer: int) -> torch.Tensor:
        """Compiled: the layer's slice taken in the graph (one input for all layers). Eager: the
        view made when the layer was written (indexing per read costs each layer of an eager
        decoding step a few microseconds of host time)."""
        if layer not in self.views:
            raise KeyError(layer)
        if torch.compiler.is_compiling():
            return self.stack[self.slots[layer]]
        return self.views[layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self.views

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.views, key=self.slots.__getitem__))

    def values(self) -> list[torch.Tensor]:
        return [self[layer] for layer in self]
