"""``run_demo``: the sample, the strokes layer and the Model dock in one screenshot."""

from __future__ import annotations

import napari
from skimage.io import imread

from napari_msd._widgets.demo import run_demo
from napari_msd._widgets.model_widget import ModelWidget
from napari_msd._widgets.predict_widget import PredictWidget
from napari_msd._widgets.train_widget import TrainWidget


def test_run_demo_screenshot(tmp_path, qtbot, monkeypatch):
    seen = {}
    screenshot = napari.Viewer.screenshot

    def spy(viewer, *args, **kwargs):
        seen["layers"] = [layer.name for layer in viewer.layers]
        seen["active"] = viewer.layers.selection.active.name
        seen["docks"] = [type(w) for w in viewer.window.dock_widgets.values()]
        seen["canvas"] = screenshot(viewer, canvas_only=True).shape
        return screenshot(viewer, *args, **kwargs)

    monkeypatch.setattr(napari.Viewer, "screenshot", spy)
    path = tmp_path / "shots" / "demo.png"
    run_demo(screenshot=path)

    assert seen["layers"] == ["EM (ISBI 2012 crop)", "strokes", "ground truth"] and seen["active"] == "strokes"
    assert {ModelWidget, TrainWidget, PredictWidget} <= set(seen["docks"])
    assert path.stat().st_size > 20_000
    picture = imread(path)
    assert picture.ndim == 3 and picture.shape[1] > seen["canvas"][1] + 200  # the whole window: canvas and docks
    gray = picture[..., :3].mean(axis=-1)
    assert gray.std() > 20  # EM texture and widgets, not a blank frame
    assert napari.current_viewer() is None  # closed after the screenshot
