"""Fixtures for dock tests: a viewer with the Train and Predict docks on a small synthetic EM-like volume, a tiny
network, and a list collecting the error notifications the docks show."""

from __future__ import annotations

import pytest

from napari_msd._widgets.session import get_session

from helpers.docks import synthetic_volume


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Messages passed to ``show_error`` by any dock."""
    from napari_msd._widgets import batch_widget, model_widget, objects_widget, predict_widget, train_widget, workers

    seen: list[str] = []
    for module in (batch_widget, model_widget, objects_widget, predict_widget, train_widget, workers):
        monkeypatch.setattr(module, "show_error", seen.append, raising=False)
    return seen


@pytest.fixture
def docks(make_napari_viewer_proxy, qtbot, monkeypatch):
    """``(viewer, train dock, predict dock)`` with the synthetic volume, its strokes and a 10-layer MS-D. The
    collapse verdict (training.health) is off: these runs of a few dozen steps test the docks, not learning;
    test_train_widget has its own test of a collapsed run, and test_loop asserts what the versions predict.
    Training runs on a thread of this process (so these tests can reach into the engine); the training process,
    the dock's default, has tests of its own (test_train_process)."""
    from napari_msd.training import health

    monkeypatch.setattr(health, "DOMINANT", 1.01)
    viewer = make_napari_viewer_proxy()
    image, strokes = synthetic_volume()
    viewer.add_image(image, name="em")
    viewer.add_labels(strokes, name="strokes")
    _, train = viewer.window.add_plugin_dock_widget("napari-msd", "Train")
    assert not train.pretrain_check.isChecked()  # off by default; learning the image is tested in test_pretraining
    _, predict = viewer.window.add_plugin_dock_widget("napari-msd", "Predict")
    session = get_session(viewer)
    session.model_config = {"depth": 10, "width": 1}
    session.set_classes(["dark", "bright"], ["#ff0000", "#00ff00"])
    train.image_combo.setCurrentText("em")
    train.labels_combo.setCurrentText("strokes")
    train.length.setValue(40)
    train.batch_size.setValue(8)
    train.patch_size.setValue(32)
    train.validate_every.setValue(10)
    train.process_check.setChecked(False)
    yield viewer, train, predict
    for dock in (train, predict):
        dock.close_workers()
