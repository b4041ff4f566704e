"""What this machine can do at best: memory bandwidth and matrix-multiply peak, measured with torch."""

from __future__ import annotations

import time

import torch


def best_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth_gbs(megabytes: int = 256) -> float:
    """Sustained bandwidth in GB/s of ``c = a + b`` on arrays far larger than the caches (3 arrays moved)."""
    n = megabytes * 2**20 // 4
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    seconds = best_time(lambda: torch.add(a, b, out=c), repeats=7)
    return 3 * n * 4 / seconds / 1e9


def matmul_peak_gflops(size: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """``size x size`` matrix-multiply rate in GFLOP/s (fp32 by default): the compute ceiling for convolutions."""
    a, b = torch.rand(size, size).to(dtype), torch.rand(size, size).to(dtype)
    c = torch.empty(size, size, dtype=dtype)
    seconds = best_time(lambda: torch.mm(a, b, out=c), repeats=5)
    return 2 * size**3 / seconds / 1e9


def describe() -> str:
    """One line naming the processor and the threads torch uses."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads"
