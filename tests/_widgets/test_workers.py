"""Dock workers and torch's compute threads: napari's main thread keeps one, every worker gets a team."""

from __future__ import annotations

import os

import torch

from napari_msd._widgets import workers


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def test_the_main_thread_keeps_one_torch_thread_and_each_worker_gets_every_core(qtbot):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the tests' own setting is one thread
        workers.keep_torch_off_the_main_thread()
        assert torch.get_num_threads() == 1
        seen: list[int] = []

        def probe(work: workers.Work):
            yield torch.get_num_threads()

        work = workers.start(probe, seen.append, lambda work: None, "probe")
        qtbot.waitUntil(lambda: not work.running, timeout=10_000)
        assert seen == [_cores()]
        assert torch.get_num_threads() == 1  # the worker's team is its own
    finally:
        torch.set_num_threads(before)
