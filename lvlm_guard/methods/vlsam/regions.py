"""Connected regions of a thresholded attention map (VL-SAM's prompt region, Sec. 3.3).

VL-SAM thresholds the object's map and takes the largest connected region as the positive area
(paper Sec. 3.3, "Prompt Generation"). scipy is not a dependency of lvlm_guard, so the labelling is
written here: a two-pass labelling over horizontal runs of foreground pixels with a union-find on
runs (Rosenfeld & Pfaltz's classical scheme). 4-connectivity by default (the paper does not say;
8 is an option).

Labels are 1..count in raster order of each region's first pixel, so every tie below breaks the
same way on every machine: of two regions of equal size, the one whose first pixel comes first in
raster order (smaller row, then smaller column) wins.
"""

from __future__ import annotations

import numpy as np

from lvlm_guard.errors import InputMismatchError


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D bool array."""
    padded = np.concatenate([[False], row, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def label_regions(binary: np.ndarray, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """(labels `[H, W]` int32, count): 0 background, 1..count regions in raster order of first pixel."""
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim != 2:
        raise InputMismatchError(f"label_regions: need a [H, W] mask, got shape {binary.shape}")
    if connectivity not in (4, 8):
        raise InputMismatchError(f"label_regions: connectivity must be 4 or 8, got {connectivity}")
    reach = 0 if connectivity == 4 else 1  # how far past a run's ends a run of the next row may start
    runs: list[tuple[int, int, int]] = []  # (row, start, end), raster order
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []  # run indices of the row above
    for y in range(binary.shape[0]):
        current = []
        for start, end in _runs(binary[y]):
            index = len(runs)
            runs.append((y, start, end))
            parent.append(index)
            for above in previous:
                _, a0, a1 = runs[above]
                if a0 < end + reach and start < a1 + reach:  # column ranges touch
                    ra, rb = find(above), find(index)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)  # the root stays the earliest run
            current.append(index)
        previous = current
    labels = np.zeros(binary.shape, dtype=np.int32)
    names: dict[int, int] = {}
    for index, (y, start, end) in enumerate(runs):
        root = find(index)
        if root not in names:  # roots are met in raster order of their region's first run
            names[root] = len(names) + 1
        labels[y, start:end] = names[root]
    return labels, len(names)


def largest_region(binary: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """`[H, W]` bool: the largest connected region of `binary` (ties: first in raster order).

    All False when `binary` is empty.
    """
    labels, count = label_regions(binary, connectivity)
    if count == 0:
        return np.zeros(labels.shape, dtype=bool)
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)[1:]
    return labels == int(np.argmax(sizes)) + 1  # argmax takes the first (smallest label) of equal sizes


def region_at(binary: np.ndarray, point: tuple[int, int], connectivity: int = 4) -> np.ndarray:
    """`[H, W]` bool: the connected region of `binary` holding pixel `point` (x, y); empty if off."""
    x, y = point
    if not binary[y, x]:
        return np.zeros(binary.shape, dtype=bool)
    labels, _ = label_regions(binary, connectivity)
    return labels == labels[y, x]
