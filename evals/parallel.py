"""Data parallelism: which items this process answers, and a barrier between processes.

Under `accelerate launch` (or any launcher that sets WORLD_SIZE > 1) each process takes a strided
shard of the items (`items[index::count]`) and writes its own record log; after a barrier the main
process merges the logs in item order. Strided shards keep the processes' work balanced when item
cost drifts along the list. Without a launcher nothing of accelerate (or torch) is imported.
If one process dies, torchrun (behind `accelerate launch`) stops the others; relaunch to resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")
BARRIER_TIMEOUT_HOURS = 24  # our choice: longer than any shard imbalance we expect


def _no_barrier() -> None:
    return None


@dataclass(frozen=True)
class ProcessShard:
    """This process's place among `count` data-parallel processes."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = _no_barrier
    device: str | None = None  # where this process should put its model (None: the AnswerFn decides)

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"process index {self.index} outside 0..{self.count - 1}")

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def take(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index :: self.count])

    @property
    def log_name(self) -> str:
        return f"shard-{self.index:03d}-of-{self.count:03d}.jsonl"


def current_shard() -> ProcessShard:
    """The shard of this process: accelerate's state when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessShard()
    import torch  # heavy, like accelerate: imported only when really distributed
    from accelerate import PartialState

    # accelerate only builds a CPU (gloo) process group when asked for the CPU explicitly
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "yes", "true") or not torch.cuda.is_available()
    # a process that finishes its shard early waits at the barrier for the others; torch's default
    # collective timeout (10 min for NCCL) would kill a resumed run whose shards were unevenly done
    state = PartialState(cpu=use_cpu, timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))
    return ProcessShard(
        index=state.process_index,
        count=state.num_processes,
        barrier=state.wait_for_everyone,
        device=str(state.device),
    )
