"""The Train dock in a real viewer: training makes a version and a live preview, pause / resume / stop, new labels
layers, every bad input gives one message and starts nothing, worker errors, closing the viewer mid-training."""

from __future__ import annotations

import time

import numpy as np
import pytest
from napari.layers import Labels

from napari_msd._widgets.conventions import PREVIEW_LAYER
from napari_msd._widgets.session import get_session

from helpers.docks import SHAPE, WAIT_MS, synthetic_volume, wait_idle


def test_training_adds_a_version_and_shows_a_live_preview(docks, qtbot, errors):
    viewer, train, _ = docks
    session = get_session(viewer)
    assert not train.retrain_button.isEnabled()
    assert train.start()
    assert not train.start_button.isEnabled() and train.stop_button.isEnabled()
    wait_idle(qtbot, train)
    assert errors == []
    assert session.versions.names() == ["v1"]
    version = session.versions.current
    assert version.steps == 40 and version.metadata.class_names == ["dark", "bright"]
    assert version.model.out_channels == 2 and not version.model.training
    assert [d.name for d in version.trained_on] == ["strokes"]
    snapshot = version.trained_on[0].labels
    assert np.array_equal(snapshot, viewer.layers["strokes"].data) and snapshot is not viewer.layers["strokes"].data
    # the live preview: the plane on screen, predicted with weights taken during training
    preview = viewer.layers[PREVIEW_LAYER]
    z = int(viewer.dims.current_step[0])
    assert preview.data.shape == (1, 64, 64) and tuple(preview.translate) == (z, 0, 0)
    assert set(np.unique(preview.data)) <= {1, 2} and train.first_preview_after is not None
    assert len(train.plot.series()["steps"]) == 40
    assert train.start_button.isEnabled() and train.retrain_button.isEnabled()
    assert train.retrain_button.text() == "Retrain v1"


def test_progress_shows_in_the_dock_not_in_napari_activity(docks, qtbot, errors):
    """A napari progress bar animates the status bar's busy indicator, which with software OpenGL recomposes the
    whole window ~30 times a second: the dock shows its own bar instead."""
    from napari.utils import progress

    _, train, _ = docks
    opened: list = []
    progress._all_instances.events.changed.connect(lambda event: opened.extend(event.added))
    assert train.progress_bar.isHidden()
    assert train.start()
    assert not train.progress_bar.isHidden() and train.progress_bar.maximum() == 40
    values: list[int] = []
    train.progress_bar.valueChanged.connect(values.append)
    wait_idle(qtbot, train)
    assert errors == [] and opened == []
    assert values and values[-1] == 40 and values == sorted(values)
    assert train.progress_bar.isHidden()


def test_the_live_preview_runs_on_the_training_thread_between_steps(docks, qtbot, errors, monkeypatch):
    """No second team of compute threads beside the training's: the preview's forward pass is queued to the
    training thread (training.between_steps) and its interval grows with its cost (a tenth of the time at most)."""
    import threading

    from napari_msd.inference.predictor import Predictor
    from napari_msd.training.engine import Trainer

    viewer, train, _ = docks
    previewed, trained = set(), set()
    predict_region, train_step = Predictor.predict_region, Trainer._train_step
    monkeypatch.setattr(
        Predictor,
        "predict_region",
        lambda self, *a, **k: (previewed.add(threading.get_ident()), predict_region(self, *a, **k))[1],
    )
    monkeypatch.setattr(
        Trainer, "_train_step", lambda self, *a: (trained.add(threading.get_ident()), train_step(self, *a))[1]
    )
    assert train.start()
    wait_idle(qtbot, train)
    assert errors == [] and train.first_preview_after is not None
    assert previewed and previewed <= trained and threading.get_ident() not in previewed
    assert train._preview_cost > 0


def test_pause_resume_and_stop(docks, qtbot, errors):
    viewer, train, _ = docks
    train.length.setValue(100_000)
    train.preview_check.setChecked(False)
    train.start()
    qtbot.waitUntil(lambda: train.trainer is not None and train.trainer.step >= 2, timeout=WAIT_MS)
    train.pause_button.click()
    qtbot.waitUntil(lambda: train.pause_button.text() == "Resume", timeout=WAIT_MS)
    step = train.trainer.step
    qtbot.wait(600)
    assert train.trainer.step == step  # paused: no step taken
    train.pause_button.click()
    qtbot.waitUntil(lambda: train.trainer.step > step + 1, timeout=WAIT_MS)
    trainer = train.trainer
    train.stop_button.click()
    at_stop = trainer.step
    qtbot.waitUntil(lambda: train.trainer is None or train.trainer._stop.is_set(), timeout=1000)
    qtbot.waitUntil(lambda: not train.work.running, timeout=WAIT_MS)
    assert trainer.step <= at_stop + 1  # it ended after the step under way (counted in steps, not seconds)
    assert errors == []
    version = get_session(viewer).versions.current
    assert version is not None and 0 < version.steps < 100_000  # the weights so far became v1
    assert train.start_button.isEnabled() and not train.stop_button.isEnabled()


def test_stop_answers_within_a_second(docks, qtbot):
    """From Stop to the last training step: the engine ends after the current step."""
    viewer, train, _ = docks
    train.length.setValue(100_000)
    train.preview_check.setChecked(False)
    train.start()
    qtbot.waitUntil(lambda: train.trainer is not None and train.trainer.step >= 3, timeout=WAIT_MS)
    trainer = train.trainer
    train.stop()
    step, asked = trainer.step, time.perf_counter()
    qtbot.waitUntil(lambda: trainer.step > step or not train.work.running, timeout=5000)
    qtbot.waitUntil(lambda: trainer.step <= step + 1, timeout=100)  # at most the step under way
    assert time.perf_counter() - asked < 1.0 or trainer.step == step
    wait_idle(qtbot, train)


def test_new_labels_layer_with_named_classes(docks, errors):
    viewer, train, _ = docks
    train.class_edit.setText("background, membrane, mitochondrion")
    layer = train.new_labels_layer()
    assert isinstance(layer, Labels) and layer.data.shape == SHAPE and not layer.data.any()
    assert layer.metadata["class_names"] == {1: "background", 2: "membrane", 3: "mitochondrion"}
    assert get_session(viewer).class_names == ["background", "membrane", "mitochondrion"]
    assert train.labels_combo.currentText() == layer.name and layer.mode == "paint"
    colors = layer.colormap.color_dict
    assert len({tuple(np.round(colors[i], 3)) for i in (1, 2, 3)}) == 3
    train.class_edit.setText("only one")
    assert train.new_labels_layer() is None and len(errors) == 1


def _no_version_started(viewer, train, errors, count=1):
    assert len(errors) == count and all("\n" not in e for e in errors), errors
    assert train.work is None or not train.work.running
    assert get_session(viewer).versions.names() == []
    assert train.start_button.isEnabled()


@pytest.mark.parametrize(
    "case, needle",
    [
        ("no labels", "no labeled pixel"),
        ("one class", "only class"),
        ("shape", "differ in shape"),
        ("rgb", "RGB"),
        ("4d", "4 dimensions"),
        ("2.5d on 2d", "needs a ZYX volume"),
    ],
)
def test_bad_input_one_message_nothing_changes(docks, qtbot, errors, case, needle):
    viewer, train, _ = docks
    strokes = viewer.layers["strokes"]
    before = strokes.data.copy()
    if case == "no labels":
        train.labels_combo.choose(viewer.add_labels(np.zeros(SHAPE, np.uint8), name="empty"))
    elif case == "one class":
        only = np.where(before == 1, 1, 0).astype(np.uint8)
        train.labels_combo.choose(viewer.add_labels(only, name="one class"))
    elif case == "shape":
        train.labels_combo.choose(viewer.add_labels(np.zeros((4, 32, 32), np.uint8), name="small"))
    elif case == "rgb":
        train.image_combo.choose(viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="colour", rgb=True))
    elif case == "4d":
        train.image_combo.choose(viewer.add_image(np.zeros((2, *SHAPE), np.float32), name="time series"))
    else:
        image2d = viewer.add_image(np.zeros(SHAPE[1:], np.float32), name="plane")
        train.image_combo.choose(image2d)
        train.labels_combo.choose(viewer.add_labels(before[1], name="plane strokes"))
        get_session(viewer).input_spec = get_session(viewer).input_spec.__class__("2.5d", 5)
    started = train.start()
    if started:  # checks that need the labels read run in the worker; the dock must come back idle
        wait_idle(qtbot, train)
    assert errors and needle in errors[-1], errors
    _no_version_started(viewer, train, errors)
    assert np.array_equal(strokes.data, before)


def test_worker_error_becomes_a_notification(docks, qtbot, errors, monkeypatch):
    viewer, train, _ = docks
    from napari_msd.training import engine

    def broken_step(self, x, y):
        raise RuntimeError("CUDA out of memory (simulated)\nsecond line")

    monkeypatch.setattr(engine.Trainer, "_train_step", broken_step)
    train.start()
    wait_idle(qtbot, train)
    assert len(errors) == 1 and "out of memory" in errors[0] and "\n" not in errors[0]
    _no_version_started(viewer, train, errors)
    assert "failed" in train.status.text()
    monkeypatch.undo()
    monkeypatch.setattr(engine.net_health, "DOMINANT", 1.01)  # undone above with the rest (see the docks fixture)
    assert train.start()  # usable again
    wait_idle(qtbot, train)
    assert get_session(viewer).versions.names() == ["v1"]


@pytest.mark.parametrize("in_process", [True, False], ids=["training process", "thread"])
def test_closing_the_viewer_mid_training_ends_cleanly(make_napari_viewer_proxy, qtbot, errors, in_process):
    viewer = make_napari_viewer_proxy()
    image, strokes = synthetic_volume()
    viewer.add_image(image, name="em")
    viewer.add_labels(strokes, name="strokes")
    _, train = viewer.window.add_plugin_dock_widget("napari-msd", "Train")
    train.process_check.setChecked(in_process)
    get_session(viewer).model_config = {"depth": 10, "width": 1}
    train.length.setValue(100_000)
    train.start()
    qtbot.waitUntil(lambda: train.trainer is not None and train.trainer.step >= 2, timeout=WAIT_MS)
    work, trainer = train.work, train.trainer
    child = train._process._child if in_process else None
    viewer.close()
    assert work.done.is_set()  # the worker thread ended before close() returned
    if in_process:
        assert child.poll() is not None  # the training process too
    else:
        assert trainer._stop.is_set()
    assert errors == []


def test_edge_aware_smoothing_setting_reaches_the_training_config(docks):
    from napari_msd.training.engine import TrainConfig

    _, train, _ = docks
    assert train.edge_weight.value() == TrainConfig.edge_weight  # the engine's default, as in the CLI
    assert train._config(None).edge_weight == TrainConfig.edge_weight
    train.edge_weight.setValue(2.5)
    assert train._config(None).edge_weight == 2.5
    train.edge_weight.setValue(0.0)
    assert train.edge_weight.text() == "off" and train._config(None).edge_weight == 0.0
    assert train.teacher_weight.value() == TrainConfig.teacher_weight == train._config(None).teacher_weight
    train.teacher_weight.setValue(1.0)
    assert train._config(None).teacher_weight == 1.0


def test_learning_rate_and_its_schedule_reach_the_training_config(docks):
    from napari_msd.training.engine import TrainConfig

    _, train, _ = docks
    config = train._config(None)  # the engine's defaults, as in the CLI
    assert (config.learning_rate, config.lr_schedule) == (TrainConfig.learning_rate, TrainConfig.lr_schedule)
    train.lr_schedule.setCurrentText("cosine")
    train.learning_rate.setValue(5e-4)
    config = train._config(None)
    assert (config.learning_rate, config.lr_schedule) == (5e-4, "cosine")


def test_a_collapsed_network_becomes_no_version(docks, qtbot, errors, monkeypatch):
    """The engine finds the network collapsed (one class everywhere): one message, no version, dock usable."""
    from napari_msd.training import health

    viewer, train, _ = docks
    real = health.check
    monkeypatch.setattr(
        health,
        "check",
        lambda counts, painted, names, recall=None: health.Health(
            real(counts, painted, names, recall).fractions, collapsed="the network predicts dark on 99.5% of the pixels"
        ),
    )
    assert train.start()
    wait_idle(qtbot, train)
    assert get_session(viewer).versions.names() == []
    assert len(errors) == 1 and "No new version: the network predicts dark on 99.5%" in errors[0]
    assert "\n" not in errors[0] and train.start_button.isEnabled() and not train.retrain_button.isEnabled()


def test_a_step_left_out_is_told(docks, monkeypatch):
    """A finished training that left out the class-prior correction says so once; a collapsed one only that."""
    from napari_msd._widgets import train_widget
    from napari_msd.training.events import TrainingFinished

    _, train, _ = docks
    shown: list[str] = []
    monkeypatch.setattr(train_widget, "show_info", shown.append)
    note = "the class-prior correction was not applied: it would all but erase dark, which is painted"
    train._on_event(TrainingFinished("steps", 10, 1.0, 10, {}, None, note=note))
    assert shown == [f"napari-msd: {note}"]
    shown.clear()
    monkeypatch.setattr(train_widget, "show_error", shown.append)
    train._on_event(TrainingFinished("steps", 10, 1.0, 10, {}, None, collapsed="one class everywhere", note=note))
    assert len(shown) == 1 and "No new version: one class everywhere" in shown[0]


def test_forest_channels_and_augmentation_defaults_are_the_engines(docks):
    from napari_msd.training.engine import TrainConfig

    _, train, _ = docks
    config = train._config(None)  # the engine's defaults, as in the CLI
    assert config.forest_channels is TrainConfig.forest_channels is False
    assert config.augmentation == TrainConfig().augmentation
    train.forest_check.setChecked(True)
    assert train._config(None).forest_channels is True


def test_a_network_with_forest_channels_trains_previews_and_predicts(docks, qtbot, errors):
    viewer, train, predict = docks
    session = get_session(viewer)
    train.forest_check.setChecked(True)
    assert train.start()
    wait_idle(qtbot, train)
    assert errors == [] and session.versions.names() == ["v1"]
    model = session.versions.current.model
    assert model.in_channels == 3 and model.forest.channels == 2  # it came back from the training process whole
    assert set(np.unique(viewer.layers[PREVIEW_LAYER].data)) <= {1, 2}
    assert predict.predict()
    wait_idle(qtbot, predict)
    assert errors == [] and set(np.unique(viewer.layers["prediction (v1)"].data)) <= {1, 2}
