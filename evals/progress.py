"""One overall progress line for a job of several runs (the main job: every guard on POPE and CHAIR).

Each run keeps its own bar; `job_progress(total)` adds a line above them with the whole job's done
share, elapsed time and an estimated time left. Work is counted in units of `item_cost`: an item's
cost is its token budget plus a fixed prefill share, so a CHAIR description (up to 512 tokens)
weighs far more than a POPE yes/no answer. The estimate assumes that ratio; it is labelled as one.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

PREFILL_COST = 8  # one prompt with its image ~ this many decoding steps (a rough CPU measure)

_CURRENT: contextvars.ContextVar[JobProgress | None] = contextvars.ContextVar("job_progress", default=None)


def item_cost(max_new_tokens: int) -> int:
    """The work one item of a task with this token budget counts for."""
    return max_new_tokens + PREFILL_COST


class JobProgress:
    """The job's total work, what is done, and the time since it started."""

    def __init__(self, total: int, desc: str = "job", enabled: bool = True) -> None:
        self.total = total
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="work",
            position=0,
            leave=True,
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| elapsed {elapsed}, about {remaining} left (estimate)",
        )

    def advance(self, work: int) -> None:
        self.bar.update(work)

    def skip(self, work: int) -> None:
        """Work already done in an earlier session (a resumed run): counted, not timed."""
        self.total -= work
        self.bar.total = self.total
        self.bar.refresh()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def close(self) -> None:
        self.bar.close()


def current() -> JobProgress | None:
    return _CURRENT.get()


@contextlib.contextmanager
def job_progress(total: int, desc: str = "job", enabled: bool = True) -> Iterator[JobProgress]:
    """Make a JobProgress the one `evals.runner.generate` reports to while the block runs."""
    progress = JobProgress(total, desc, enabled)
    token = _CURRENT.set(progress)
    try:
        yield progress
    finally:
        _CURRENT.reset(token)
        progress.close()
