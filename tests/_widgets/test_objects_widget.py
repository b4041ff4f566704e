"""The Objects dock: the same objects and table as the core pipeline, a labels layer whose features are the table,
the list and histogram, going to an object, CSV export that never overwrites silently, stop, and bad choices."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_msd._widgets.objects_widget import OBJECTS_OUTPUT, ObjectsWidget
from napari_msd.objects import Scale, measure_objects

from helpers.docks import WAIT_MS, wait_idle


def semantic_volume() -> tuple[np.ndarray, np.ndarray]:
    """A (6, 80, 80) prediction: class 1 background, class 2 four boxes (two of them touching through a neck),
    class 3 one blob; and an image brighter inside the boxes."""
    labels = np.ones((6, 80, 80), np.uint8)
    labels[1:5, 5:20, 5:20] = 2
    labels[1:5, 5:20, 30:45] = 2
    labels[1:5, 10:14, 20:30] = 2  # a neck joining the first two boxes
    labels[0:3, 50:70, 50:70] = 2
    labels[2:6, 60:75, 10:25] = 3
    image = np.where(labels == 2, 200, 50).astype(np.uint8)
    return labels, image


@pytest.fixture
def dock(make_napari_viewer_proxy, errors):
    viewer = make_napari_viewer_proxy()
    labels, image = semantic_volume()
    viewer.add_image(image, name="em", scale=(40, 4, 4))
    viewer.add_labels(
        labels, name="prediction", scale=(40, 4, 4), metadata={"class_names": {1: "cytoplasm", 2: "box", 3: "blob"}}
    )
    _, widget = viewer.window.add_plugin_dock_widget("napari-msd", "Objects")
    assert isinstance(widget, ObjectsWidget)
    widget.source.setCurrentText("prediction")
    widget.image.setCurrentText("em")
    yield viewer, widget, errors
    widget.close_workers()


def test_objects_of_the_checked_classes_with_their_table(dock, qtbot):
    viewer, widget, errors = dock
    assert [widget.classes.item(i).text() for i in range(widget.classes.count())] == ["cytoplasm", "box", "blob"]
    widget.set_classes(["box", "blob"])
    assert widget.find()
    wait_idle(qtbot, widget, WAIT_MS)
    assert errors == []
    layer = viewer.layers["prediction objects"]
    assert layer.metadata["napari_msd_output"] == OBJECTS_OUTPUT
    labels, image = semantic_volume()
    objects = np.asarray(layer.data)
    assert objects.max() == 3  # the joined boxes, the third box, the blob; no background object
    for c in (2, 3):  # every object lies in one class, and each class's connected components are found
        _, n = ndi.label(labels == c)
        assert len(np.unique(objects[labels == c])) == n
    table = widget.table
    assert table is not None and len(table) == 3
    assert sorted(table.columns["class"].tolist()) == ["blob", "box", "box"]
    expected = measure_objects(
        objects, image=image, class_names={2: "box", 3: "blob"}, semantic=labels, scale=Scale((40, 4, 4), "")
    )
    assert np.array_equal(table.columns["volume_px"], expected.columns["volume_px"])
    assert np.allclose(table.columns["mean_intensity"], expected.columns["mean_intensity"])
    assert layer.features["index"].tolist() == table.columns["label"].tolist()  # napari shows a row per label
    assert widget.list.rowCount() == 3 and widget.column.currentText() == "volume_px"
    assert widget.histogram.counts.sum() == 3
    assert "3 objects" in widget.status.text()
    biggest = int(np.argmax(table.columns["volume_px"]))
    widget.go_to_object(biggest)
    assert layer.selected_label == int(table.columns["label"][biggest])
    z = int(round(float(table.columns["centroid_z_px"][biggest])))
    assert viewer.dims.current_step[0] == z


def test_split_separates_the_boxes_joined_by_a_neck(dock, qtbot):
    viewer, widget, errors = dock
    widget.set_classes(["box"])
    widget.split.setChecked(True)
    assert widget.find()
    wait_idle(qtbot, widget, WAIT_MS)
    assert errors == []
    assert len(widget.table) == 3  # the two joined boxes now apart, and the third box
    assert sorted(widget.table.columns["class"].tolist()) == ["box"] * 3


def test_export_writes_every_row_and_never_overwrites_silently(dock, qtbot, tmp_path):
    viewer, widget, errors = dock
    assert not widget.export(str(tmp_path / "early.csv"))
    assert "Find objects first" in errors[-1]
    widget.set_classes(["box", "blob"])
    widget.find()
    wait_idle(qtbot, widget, WAIT_MS)
    path = tmp_path / "objects.csv"
    path.write_text("the user's own file\n")
    assert not widget.export(str(path))
    assert "already exists" in errors[-1] and path.read_text() == "the user's own file\n"
    assert widget.export(str(path), overwrite=True)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 3 and {"label", "class", "volume_px", "mean_intensity"} <= set(rows[0])


def test_bad_choices_start_nothing(dock):
    viewer, widget, errors = dock
    widget.set_classes([])
    assert not widget.find() and "at least one class" in errors[-1]
    widget.set_classes(["box"])
    viewer.add_image(np.zeros((3, 10, 10), np.uint8), name="other")
    widget.image.setCurrentText("other")
    assert not widget.find() and "shape" in errors[-1]
    assert widget.work is None


def test_stop_keeps_nothing(dock, qtbot, monkeypatch):
    import time

    import napari_msd.objects as objects
    from napari_msd.objects import Progress

    def endless(*args, **kwargs):  # a run far longer than the test: only Stop can end it
        done = 0
        while True:
            time.sleep(0.01)
            done += 1
            yield Progress("label", done, 10**9)

    monkeypatch.setattr(objects, "iter_objects", endless)
    viewer, widget, errors = dock
    widget.set_classes(["box", "blob"])
    assert widget.find()
    qtbot.waitUntil(lambda: "labelling" in widget.status.text(), timeout=WAIT_MS)
    widget.find_or_stop()  # the button reads Stop while running
    wait_idle(qtbot, widget, WAIT_MS)
    assert errors == [] and widget.table is None
    assert "prediction objects" not in [layer.name for layer in viewer.layers]
    assert "nothing was kept" in widget.status.text()
    assert widget.find_button.text() == "Find objects" and not widget.progress_bar.isVisible()
