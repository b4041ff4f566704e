"""How many compute threads training uses on a CPU that other processes are using too.

Two teams of compute threads on the same cores do not share them fairly: an OpenMP thread whose core is
taken holds up every barrier of every operation of its team, so a 2-thread training next to one busy process
made a third of the steps it made alone (71 against 237 on 2 cores), far below the half of the CPU it
could have had. Training therefore sizes its team to the cores other processes leave free: it measures the
CPU use of the cores it may run on, minus its own, when it starts and again at every validation, and uses
the free cores (rounded, at least one). A fixed ``threads`` setting turns this off.
"""

from __future__ import annotations

import math
import os
import time

import psutil

PROBE_S = 0.2  # the first measurement needs this much time since the last one


def free_threads(cores: int, busy: float) -> int:
    """The cores that others leave free, rounded to the nearest (at least 1, at most ``cores``)."""
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


class CpuShare:
    """The training's share of the CPU: :meth:`update` re-measures and returns the thread count to use."""

    def __init__(self, cores: int):
        self.cores = max(1, int(cores))
        self.threads = self.cores
        self.busy = 0.0  # cores kept busy by other processes at the last measurement
        try:
            self._cpus: list[int] | None = sorted(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows: every core
            self._cpus = None
        self._process = psutil.Process()
        self._since = time.perf_counter()
        self._sample()

    def _sample(self) -> tuple[float, float]:
        """Busy cores of the machine (those this process may use) and of this process, since the last sample."""
        per_cpu = psutil.cpu_percent(interval=None, percpu=True)
        used = sum(per_cpu[i] for i in self._cpus if i < len(per_cpu)) if self._cpus else sum(per_cpu)
        return used / 100, self._process.cpu_percent(interval=None) / 100

    def update(self) -> int:
        """Measure how busy the other processes kept the cores since the last call, and choose the threads."""
        wait = PROBE_S - (time.perf_counter() - self._since)
        if wait > 0:
            time.sleep(wait)
        total, mine = self._sample()
        self._since = time.perf_counter()
        self.busy = max(0.0, total - mine)
        self.threads = free_threads(self.cores, self.busy)
        return self.threads

    def describe(self) -> str:
        if self.threads == self.cores:
            return f"{self.threads} threads on {self.cores} free cores"
        return (
            f"{self.threads} thread{'s' if self.threads > 1 else ''}: other processes keep {self.busy:.1f} of "
            f"{self.cores} cores busy"
        )


__all__ = ["CpuShare", "free_threads"]
