"""A new user's first hour: the sample's class names in the Train dock and the model, review buttons that wait
for a prediction, three plain tabs in the demo, a Batch dock that fits a 1000 px screen, tooltips for the jargon."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QTabBar
from test_predict_widget import add_version

from napari_msd._widgets.demo import DOCKS, open_demo
from napari_msd._widgets.session import get_session
from napari_msd._widgets.train_widget import DEFAULT_CLASSES

from helpers.docks import wait_idle

SAMPLE_CLASSES = ["membrane", "cell interior"]


@pytest.fixture
def demo(make_napari_viewer, qtbot):
    """``(viewer, widgets by name)`` as ``napari-msd demo`` sets them up, in a shown test viewer."""
    viewer, widgets = open_demo(viewer=make_napari_viewer(show=True))
    _process_events()
    return viewer, widgets


def _process_events() -> None:
    for _ in range(5):
        QApplication.processEvents()


# -- 1. the classes of the chosen labels layer -------------------------------------------------------------
def test_demo_train_dock_names_the_sample_classes(demo):
    _, widgets = demo
    assert widgets["Train"].labels_combo.currentText() == "strokes"
    assert widgets["Train"].class_edit.text() == ", ".join(SAMPLE_CLASSES)


def test_classes_box_follows_the_chosen_labels_layer_and_names_the_model(
    make_napari_viewer_proxy, qtbot, errors, monkeypatch
):
    from napari_msd.training import health

    monkeypatch.setattr(health, "DOMINANT", 1.01)  # a few steps test the dock, not learning (see conftest)
    viewer = make_napari_viewer_proxy()
    viewer.open_sample("napari-msd", "isbi_strokes")
    _, train = viewer.window.add_plugin_dock_widget("napari-msd", "Train")
    session = get_session(viewer)
    session.set_classes(["dark", "bright"], ["#ff0000", "#00ff00"])  # stale names from an earlier layer
    session.model_config = {"depth": 6, "width": 1}
    assert train.labels_combo.currentText() == "strokes"
    assert train.class_edit.text() == "membrane, cell interior"

    unnamed = viewer.add_labels(np.zeros(viewer.layers["strokes"].data.shape, np.uint8), name="mine")
    train.labels_combo.choose(unnamed)
    assert train.class_edit.text() == DEFAULT_CLASSES  # an example for a new layer
    train.class_edit.textEdited.emit("a, b, c")  # as typed by the user
    train.labels_combo.choose(viewer.layers["strokes"])
    assert train.class_edit.text() == "membrane, cell interior"
    train.labels_combo.choose(unnamed)
    assert train.class_edit.text() == "a, b, c"  # what the user typed comes back
    train.labels_combo.choose(viewer.layers["strokes"])

    train.preview_check.setChecked(False)
    train.process_check.setChecked(False)  # on a thread: the collapse verdict switched off above applies
    for box, value in ((train.length, 6), (train.batch_size, 2), (train.patch_size, 32), (train.validate_every, 3)):
        box.setValue(value)
    assert train.start()
    assert train._job.config.class_names == SAMPLE_CLASSES
    wait_idle(qtbot, train)
    assert errors == []
    assert session.versions.current is not None
    assert list(session.versions.current.metadata.class_names) == SAMPLE_CLASSES
    assert session.class_names == SAMPLE_CLASSES


def test_classes_typed_for_a_named_layer_rename_its_classes(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.open_sample("napari-msd", "isbi_strokes")
    _, train = viewer.window.add_plugin_dock_widget("napari-msd", "Train")
    strokes = viewer.layers["strokes"]
    train.class_edit.setText("membrane, cytoplasm")
    train._classes_from(strokes)
    assert get_session(viewer).class_names == ["membrane", "cytoplasm"]
    assert strokes.metadata["class_names"] == {1: "membrane", 2: "cytoplasm"}
    train.class_edit.setText("one, two, three")  # not one name per class: the layer's names stay
    train._classes_from(strokes)
    assert get_session(viewer).class_names == ["membrane", "cytoplasm"]
    assert train.class_edit.text() == "membrane, cytoplasm"


# -- 2. review buttons wait for a prediction ---------------------------------------------------------------
def test_review_buttons_wait_for_a_prediction(docks, qtbot, errors):
    viewer, train, predict = docks
    for button in (predict.corrections_button, predict.next_button):
        assert not button.isEnabled() and "Predict first" in button.toolTip()
    add_version(viewer)
    predict.uncertainty_check.setChecked(False)
    assert predict.predict()
    assert predict.corrections_button.isEnabled() and "Predict first" not in predict.corrections_button.toolTip()
    assert not predict.next_button.isEnabled() and "Uncertainty" in predict.next_button.toolTip()
    wait_idle(qtbot, predict)
    predict.uncertainty_check.setChecked(True)
    assert predict.predict()
    assert predict.next_button.isEnabled() and predict.corrections_button.isEnabled()
    wait_idle(qtbot, predict)
    session = get_session(viewer)
    first, second = [layer for layer in viewer.layers if layer in session.predictions]  # both remembered
    assert [train.labels_combo.itemText(i) for i in range(train.labels_combo.count())] == ["strokes"]
    viewer.layers.remove(second)
    assert predict.corrections_button.isEnabled() and not predict.next_button.isEnabled()  # first: no uncertainty
    viewer.layers.remove(first)
    for button in (predict.corrections_button, predict.next_button):
        assert not button.isEnabled() and "Predict first" in button.toolTip()
    assert errors == []


# -- 3. the demo's dock area: three tabs, no empty stub ----------------------------------------------------
def _tab_bars(viewer) -> list[QTabBar]:
    window = viewer.window._qt_window
    return [
        bar
        for bar in window.findChildren(QTabBar, options=Qt.FindChildOption.FindDirectChildrenOnly)
        if bar.isVisible()
    ]


def test_demo_shows_exactly_the_three_docks_as_tabs(demo):
    viewer, _ = demo
    viewer.window.resize(1500, 950)
    _process_events()
    bars = _tab_bars(viewer)
    assert len(bars) == 1
    bar = bars[0]
    assert [bar.tabText(i) for i in range(bar.count())] == [f"{name} (napari-msd)" for name in DOCKS]
    assert bar.tabRect(bar.count() - 1).right() >= bar.width() - 1  # the tabs fill the bar: no empty tab after them


# -- 4. a Batch dock that fits ---------------------------------------------------------------------------
def test_batch_dock_is_compact_and_the_window_fits_1000_px(demo):
    viewer, _ = demo
    _, batch = viewer.window.add_plugin_dock_widget("napari-msd", "Batch")
    _process_events()
    assert batch.minimumSizeHint().height() < 400 and batch.sizeHint().height() < 700
    batch.options_toggle.setChecked(True)  # unfolded options scroll; the dock does not grow
    _process_events()
    assert not batch.options.isHidden()
    assert batch.minimumSizeHint().height() < 400 and batch.sizeHint().height() < 700
    assert viewer.window._qt_window.minimumSizeHint().height() <= 1000 - 100  # menu bar and taskbar to spare
    assert batch.status_label.wordWrap()


# -- 5. plain words for the jargon -------------------------------------------------------------------------
def test_controls_with_jargon_have_tooltips(demo):
    viewer, widgets = demo
    _, batch = viewer.window.add_plugin_dock_widget("napari-msd", "Batch")
    model, train, predict = widgets["Model"], widgets["Train"], widgets["Predict"]
    controls = {
        "2.5D": [model.input_mode, model.slices],
        "receptive field": [model.rf_label],
        "effective halo": [model.file_label],
        "halo": [batch.halo, batch.tile_size],
        "edge-aware smoothing (Potts/CRF)": [train.edge_weight],
        "forest teacher": [train.teacher_weight],
        "held-out strokes": [train.validate_every, train.patience, train.plot],
        "replay": [train.retrain_button],
        "uncertainty": [predict.uncertainty_check, predict.measure, predict.next_button],
        "corrections": [predict.corrections_button],
        "batch options": [batch.average_orientations, batch.probabilities, batch.ome_zarr, batch.overwrite],
    }
    missing = {
        term: [type(c).__name__ for c in found if len(c.toolTip().split()) < 5] for term, found in controls.items()
    }
    assert not any(missing.values()), missing
    assert "Potts" in train.edge_weight.toolTip() and "held-out" in train.validate_every.toolTip()
    assert "effective receptive field" in model.rf_label.toolTip() and "Halo" in batch.halo.toolTip()


def test_readme_has_a_glossary_before_the_data_credit():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    glossary = readme[readme.index("## Glossary") : readme.index("## Data credit")]
    for term in (
        "held-out",
        "Replay",
        "2.5D",
        "effective receptive field",
        "Halo",
        "Potts",
        "CRF",
        "Edge-aware smoothing",
        "Prior correction",
        "Forest teacher",
    ):
        assert term in glossary, term
