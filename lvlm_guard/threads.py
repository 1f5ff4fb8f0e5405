"""CPU thread settings that fit the machine, for the CLI, the evals and the app.

torch sizes its intra-op pool from the machine's cores, not from what this process may use (CPU
affinity, a container's CPU quota), and every Python thread that runs torch ops gets a pool of
that size: the app's generation worker beside Streamlit's own threads then oversubscribes a small
machine, and spinning OpenMP workers wait on each other (measured by `scripts/bench_threads.py`;
results in results/threads/).

`configure_threads(workers)` sets torch's pool, in the calling thread, to the CPUs this process may
use divided by the number of threads that generate at once (`workers`); LVLM_GUARD_THREADS
overrides it. Call it in each thread that runs the model (OpenMP settings are per thread).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

ENV = "LVLM_GUARD_THREADS"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = Path("/sys/fs/cgroup/cpu.max")
    try:
        limit, period = quota.read_text().split()[:2]
        if limit != "max":
            count = min(count, max(1, math.floor(int(limit) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def thread_count(workers: int = 1, reserve: int = 0) -> int:
    """Threads per generating worker: LVLM_GUARD_THREADS if set, else (usable CPUs - reserve) //
    workers, at least 1. `reserve`: CPUs left to other busy threads of the process (the app's web
    server): an OpenMP team that shares its cores with them spins at every barrier."""
    override = os.environ.get(ENV, "").strip()
    if override:
        try:
            value = int(override)
        except ValueError:
            value = 0
        if value < 1:
            from lvlm_guard.errors import GuardError

            raise GuardError(f"{ENV}={override!r}: must be a positive integer")
        return value
    return max(1, (usable_cpus() - reserve) // max(1, workers))


def configure_threads(workers: int = 1, reserve: int = 0) -> int:
    """Set torch's intra-op threads for this thread (see the module docstring); returns the count."""
    import torch

    count = thread_count(workers, reserve)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
