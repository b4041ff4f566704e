"""The Train dock's default: training in a process of its own (training.remote), reused by every run. A version and a
live preview come back, Retrain reuses the process, stop and pause reach it, a crash in it is one message and the
next training starts a new one, and closing the viewer ends it."""

from __future__ import annotations

import numpy as np

from napari_msd._widgets.conventions import PREVIEW_LAYER
from napari_msd._widgets.session import get_session
from napari_msd.training.remote import RemoteRun

from helpers.docks import WAIT_MS, wait_idle


def _in_process(train) -> None:
    train.process_check.setChecked(True)
    train.length.setValue(60)


def _start_long_run(train, qtbot, steps: int) -> RemoteRun:
    """Start a training in the process that would not end by itself; returns it once ``steps`` steps are done."""
    _in_process(train)
    train.length.setValue(100000)
    assert train.start()
    qtbot.waitUntil(lambda: isinstance(train.trainer, RemoteRun) and train.trainer.step >= steps, timeout=WAIT_MS)
    return train.trainer


def test_training_in_the_process_adds_a_version_and_a_live_preview(docks, qtbot, errors):
    viewer, train, _ = docks
    _in_process(train)
    session = get_session(viewer)
    assert train.start()
    qtbot.waitUntil(lambda: isinstance(train.trainer, RemoteRun), timeout=WAIT_MS)
    wait_idle(qtbot, train)
    assert errors == []
    assert session.versions.names() == ["v1"]
    version = session.versions.current
    assert version.steps == 60 and version.metadata.class_names == ["dark", "bright"]
    assert not version.model.training and [d.name for d in version.trained_on] == ["strokes"]
    preview = viewer.layers[PREVIEW_LAYER]
    assert set(np.unique(preview.data)) <= {1, 2} and train.first_preview_after is not None
    assert len(train.plot.series()["steps"]) == 60
    child = train._process._child
    assert child.poll() is None  # kept for the next run

    # Retrain after a correction: the same process, a new version from the parent's weights
    strokes = viewer.layers["strokes"]
    z = int(np.flatnonzero((np.asarray(strokes.data) > 0).any(axis=(1, 2)))[0])
    strokes.data[z, 4:12, 4:12] = 2
    strokes.refresh()
    assert train.retrain()
    wait_idle(qtbot, train)
    assert errors == [] and train._process._child is child
    assert session.versions.names() in (["v1"], ["v1", "v2"])  # a retraining that does not beat v1 is refused


def test_stop_and_pause_reach_the_process(docks, qtbot, errors):
    _, train, _ = docks
    run = _start_long_run(train, qtbot, 2)
    train.toggle_pause()
    qtbot.waitUntil(lambda: train.pause_button.text() == "Resume", timeout=WAIT_MS)
    step = run.step
    qtbot.wait(500)
    assert run.step <= step + 1  # paused after the step under way
    train.toggle_pause()
    qtbot.waitUntil(lambda: run.step > step + 1, timeout=WAIT_MS)
    train.stop()
    wait_idle(qtbot, train)
    assert errors == [] and run.step < 100000


def test_a_crash_in_the_process_is_one_message_and_the_next_training_starts_a_new_one(docks, qtbot, errors):
    viewer, train, _ = docks
    _start_long_run(train, qtbot, 1)
    train._process._child.kill()
    wait_idle(qtbot, train)
    assert len(errors) == 1 and "training process ended unexpectedly" in errors[0] and "\n" not in errors[0]
    assert "Training failed" in train.status.text() and train.start_button.isEnabled()
    assert get_session(viewer).versions.names() == []
    errors.clear()
    train.length.setValue(20)
    assert train.start()
    wait_idle(qtbot, train)
    assert errors == [] and train._process.alive


def test_closing_the_dock_mid_training_ends_the_process(docks, qtbot, errors):
    _, train, _ = docks
    _start_long_run(train, qtbot, 1)
    child = train._process._child
    train.close_workers()
    assert child.poll() is not None and train._process is None
    assert errors == []
