"""Training in a child process: the engine's events, control from another thread, previews, the result, errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from napari_msd.training.engine import Trainer
from napari_msd.training.events import Paused, TrainingFinished, TrainStep
from napari_msd.training.remote import PreviewResult, TrainingProcess, TrainingProcessError
from napari_msd.training.sampling import TrainingData, TrainingDataError

from helpers.training import tiny_config


def _config(**overrides):
    return tiny_config(**{"steps": 20, **overrides})


@pytest.fixture(scope="module")
def process():
    proc = TrainingProcess()
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def data(make_task):
    image, labels, _ = make_task(shape=(96, 96))
    return [TrainingData(image, labels, "strokes")]


def test_a_run_in_the_child_gives_the_engines_events_and_the_same_network(process, data):
    run = process.run(data, _config())
    events = list(run)
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert [e.step for e in steps] == list(range(1, 21)) and run.step == 20
    assert isinstance(events[-1], TrainingFinished) and run.collapsed is None
    assert run.result is not None and run.result.metadata.class_names
    local = Trainer(data, _config())
    list(local.run())
    # the same seed and thread count in another process: the same weights
    for a, b in zip(run.result.model.state_dict().values(), local.snapshot().state_dict().values()):
        torch.testing.assert_close(a, b)


def test_the_child_is_reused_and_a_retraining_starts_from_the_weights_sent(process, data):
    first = process.run(data, _config())
    list(first)
    pid = process._child.pid
    again = process.run(data, _config(steps=5), init=(first.result.model, first.result.metadata))
    finished = [e for e in again if isinstance(e, TrainingFinished)]
    assert process._child.pid == pid and finished and finished[0].steps == 5


def test_stop_pause_and_preview_from_another_thread(process, data):
    run = process.run(data, _config(steps=None, time_limit=120))
    seen, previews = [], []

    def control():
        while run.step < 3:
            time.sleep(0.01)
        previews.append(run.preview((slice(10, 60), slice(0, 96)), halo=16).result(timeout=60))
        run.pause()
        time.sleep(0.3)
        run.resume()
        run.stop()

    t = threading.Thread(target=control)
    t.start()
    for event in run:
        seen.append(event)
    t.join()
    (preview,) = previews
    assert isinstance(preview, PreviewResult) and preview.labels.shape == (50, 96) and preview.seconds > 0
    assert set(np.unique(preview.labels)) <= {1, 2}
    assert [e.paused for e in seen if isinstance(e, Paused)] == [True, False]
    assert seen[-1].reason == "stopped" and seen[-1].steps < 1000


def test_a_preview_asked_after_the_run_is_cancelled(process, data):
    run = process.run(data, _config(steps=3))
    list(run)
    assert run.preview((slice(0, 8), slice(0, 8)), halo=4).cancelled()


def test_an_error_in_the_child_is_raised_by_the_events_with_its_message(process, data):
    empty = [TrainingData(data[0].image, np.zeros_like(data[0].labels), "nothing painted")]
    with pytest.raises(TrainingDataError, match="no labeled pixel found; paint"):
        list(process.run(empty, _config()))
    assert process.alive  # the child stays for the next run
    list(process.run(data, _config(steps=2)))


def test_a_child_that_dies_is_a_one_line_error_and_the_next_run_starts_a_new_one(data):
    proc = TrainingProcess()
    try:
        run = proc.run(data, _config(steps=None, time_limit=120))
        events = iter(run)
        next(events)
        proc._child.kill()
        with pytest.raises(TrainingProcessError, match="ended unexpectedly"):
            list(events)
        assert not proc.alive
        assert any(isinstance(e, TrainingFinished) for e in proc.run(data, _config(steps=2)))
    finally:
        proc.close()


def test_close_ends_a_running_child(data):
    proc = TrainingProcess()
    run = proc.run(data, _config(steps=None, time_limit=120))
    next(iter(run))
    child = proc._child
    proc.close(timeout=10)
    assert child.poll() is not None and not proc.alive
