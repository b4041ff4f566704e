"""The training's share of the CPU: the cores other processes leave free, measured, at least one thread."""

from __future__ import annotations

import pytest
import torch

from napari_msd.training import cpu_share as cpu_share_module
from napari_msd.training.cpu_share import CpuShare, free_threads


@pytest.mark.parametrize(
    ("cores", "busy", "threads"),
    [
        (2, 0.0, 2),
        (2, 0.4, 2),
        (2, 0.6, 1),
        (2, 1.0, 1),
        (2, 2.0, 1),
        (2, 5.0, 1),
        (8, 0.0, 8),
        (8, 3.2, 5),
        (8, 2.5, 6),
        (1, 0.9, 1),
    ],
)
def test_free_threads_rounds_the_free_cores(cores, busy, threads):
    assert free_threads(cores, busy) == threads


class FakeCpu:
    """psutil's answers: per-core use of the machine (percent) and this process's use (percent of one core)."""

    def __init__(self):
        self.per_cpu, self.mine = [0.0, 0.0], 0.0

    def cpu_percent(self, interval=None, percpu=False):
        assert interval is None and percpu
        return list(self.per_cpu)

    def Process(self):  # noqa: N802 - psutil's name
        fake = self

        class _Process:
            def cpu_percent(self, interval=None):
                return fake.mine

        return _Process()


@pytest.fixture
def cpu(monkeypatch):
    fake = FakeCpu()
    monkeypatch.setattr(cpu_share_module, "psutil", fake)
    monkeypatch.setattr(cpu_share_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cpu_share_module, "PROBE_S", 0.0)
    return fake


def test_alone_training_uses_every_core(cpu):
    share = CpuShare(2)
    cpu.per_cpu, cpu.mine = [100.0, 95.0], 190.0  # all of it is this process
    assert share.update() == 2 and share.busy == pytest.approx(0.05)
    assert share.describe() == "2 threads on 2 free cores"


def test_a_busy_neighbour_leaves_one_thread_and_its_departure_gives_it_back(cpu):
    share = CpuShare(2)
    cpu.per_cpu, cpu.mine = [100.0, 100.0], 100.0  # another process keeps one core busy
    assert share.update() == 1 and share.busy == pytest.approx(1.0)
    assert share.describe() == "1 thread: other processes keep 1.0 of 2 cores busy"
    cpu.per_cpu, cpu.mine = [100.0, 0.0], 100.0
    assert share.update() == 2


def test_only_the_cores_this_process_may_use_count(cpu, monkeypatch):
    cpu.per_cpu = [0.0, 0.0, 100.0, 100.0]  # busy cores outside the affinity set
    share = CpuShare(2)
    assert share.update() == 2 and share.busy == 0.0


def test_the_engine_sizes_its_team_and_says_so(cpu, make_task):
    from napari_msd.training.engine import TrainConfig, Trainer
    from napari_msd.training.events import CpuThreads, TrainStep, Validated
    from napari_msd.training.sampling import TrainingData

    image, labels, _ = make_task()
    config = TrainConfig(
        model={"depth": 4},
        patch_size=32,
        batch_size=2,
        steps=4,
        validate_every=2,
        teacher_weight=0,
        prior_correction=False,
        measure_halo=False,
    )
    before = torch.get_num_threads()
    try:
        cpu.per_cpu, cpu.mine = [100.0, 100.0], 100.0
        trainer = Trainer([TrainingData(image, labels)], config)
        events = []
        for event in trainer.run():
            events.append(event)
            if isinstance(event, CpuThreads):
                assert torch.get_num_threads() == event.threads
                cpu.per_cpu, cpu.mine = [100.0, 100.0], 200.0  # the neighbour has gone
        said = [e for e in events if isinstance(e, CpuThreads)]
        assert [(e.threads, e.cores) for e in said] == [(1, 2), (2, 2)]
        kinds = [type(e) for e in events]
        assert kinds.index(CpuThreads) < kinds.index(TrainStep)  # chosen before the first step
        assert kinds[kinds.index(CpuThreads, kinds.index(CpuThreads) + 1) - 1] is Validated  # re-chosen at a validation
        assert Trainer([TrainingData(image, labels)], TrainConfig(threads=1)).cpu_share is None  # fixed: no adapting
    finally:
        torch.set_num_threads(before)
