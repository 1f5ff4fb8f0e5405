"""Thread settings (lvlm_guard.threads): the count follows usable CPUs, workers and the override."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from lvlm_guard.errors import GuardError
from lvlm_guard.threads import ENV, configure_threads, thread_count, usable_cpus


def test_count_divides_usable_cpus_among_workers(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr("lvlm_guard.threads.usable_cpus", lambda: 8)
    assert [thread_count(w) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert [thread_count(1, reserve=r) for r in (1, 7, 9)] == [7, 1, 1]


def test_usable_cpus_respects_the_affinity_mask():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("value", "ok"), [("3", True), ("0", False), ("two", False)])
def test_the_environment_overrides(monkeypatch, value, ok):
    monkeypatch.setenv(ENV, value)
    if ok:
        assert thread_count(4) == 3
    else:
        with pytest.raises(GuardError, match=ENV):
            thread_count()


def test_configure_sets_torch_in_the_calling_thread(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    before = torch.get_num_threads()
    seen = []

    def worker():
        seen.append((configure_threads(), torch.get_num_threads()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    try:
        assert seen == [(1, 1)]
    finally:
        torch.set_num_threads(before)
