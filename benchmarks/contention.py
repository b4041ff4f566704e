"""Training next to another busy process: steps per second alone, and beside a competitor with the thread team
fixed at every core (the old behaviour) or sized to the free cores (``training.cpu_share``, the default).

    python benchmarks/contention.py               # about 5 minutes on a 2-core CPU
    python benchmarks/contention.py --seconds 10  # a smoke test

Training: the paper MS-D (100 layers, width 1) with the defaults of the Train dock and ``napari-msd train``
(batch 16, 64 px patches) on the bundled ISBI sample and its strokes, for ``--seconds`` of wall clock; the
forest teacher, prior correction and halo measurement are off (only the steps count). Steps per second are
timed from the first to the last training step. Competitors, each a separate process started before training
and killed after it:

- ``python``: one core kept busy by a pure-Python loop (a single-threaded job: a compile, a script);
- ``torch``: matrix products with torch on every core (another training, a test run).

The target (issue: interactive speed) is at least half of the alone speed beside a competitor. Run it alone on
the machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

COMPETITORS = {
    "python": "while True: pass",
    "torch": ("import torch\na, b = torch.rand(1024, 1024), torch.rand(1024, 1024)\nwhile True: torch.mm(a, b)"),
}


def train_speed(seconds: float, threads: int | None) -> tuple[float, str]:
    """Steps per second of a training of ``seconds``, and what the engine said about its threads."""
    from napari_msd.training.engine import TrainConfig, Trainer
    from napari_msd.training.events import CpuThreads, TrainStep
    from napari_msd.training.sampling import TrainingData

    data = np.load(Path(__file__).resolve().parents[1] / "src" / "napari_msd" / "data" / "isbi_sample.npz")
    config = TrainConfig(
        steps=None,
        time_limit=seconds,
        threads=threads,
        teacher_weight=0,
        prior_correction=False,
        measure_halo=False,
        validate_every=25,
    )
    times, said = [], []
    for event in Trainer([TrainingData(data["image"], data["strokes"], "sample")], config).run():
        if isinstance(event, TrainStep):
            times.append(time.perf_counter())
        elif isinstance(event, CpuThreads):
            said.append(event.text)
    speed = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return speed, " -> ".join(said) if said else f"{threads} threads (fixed)"


def run(args) -> list[dict]:
    from napari_msd.base.device import cpu_threads

    cores = cpu_threads()
    args.machine = describe()  # before any training changes torch's thread count
    rows = []
    alone, said = train_speed(args.seconds, None)
    rows.append({"competitor": "none", "threads": "free cores (default)", "steps_per_s": alone, "said": said})
    for name in args.competitors:
        for label, threads in (("every core (fixed)", cores), ("free cores (default)", None)):
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITORS[name]])
            try:
                time.sleep(2)  # let it start
                speed, said = train_speed(args.seconds, threads)
            finally:
                competitor.kill()
                competitor.wait()
            rows.append({"competitor": name, "threads": label, "steps_per_s": speed, "said": said})
            time.sleep(1)
    for row in rows:
        row["share"] = row["steps_per_s"] / alone
    return rows


def table(rows: list[dict], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| competitor | training threads | steps/s | share of alone | engine said |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['competitor']} | {r['threads']} | {r['steps_per_s']:.2f} | {r['share']:.0%} | {r['said']} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="training time per row (default 45)")
    parser.add_argument("--competitors", nargs="+", default=list(COMPETITORS), choices=list(COMPETITORS))
    args = parser.parse_args()
    rows = run(args)
    print(table(rows, args.machine))


if __name__ == "__main__":
    main()
