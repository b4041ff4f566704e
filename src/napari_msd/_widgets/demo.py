"""``napari-msd demo``: a viewer with the ISBI sample, its example strokes and the napari-msd docks, ready to train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import napari  # at import time, so a missing GUI fails where the CLI imports this module
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-msd"
SAMPLE_KEY = "isbi_strokes"
DOCKS = ("Model", "Train", "Predict")


def open_demo(show: bool = True, viewer: napari.Viewer | None = None) -> tuple[napari.Viewer, dict[str, Any]]:
    """A viewer with the sample data, the strokes layer selected, and the Model, Train and Predict docks
    (the Model and Predict docks tabbed behind the Train dock). Returns the viewer and the docks by name.
    ``viewer``: set up this one instead of a new one (tests)."""
    if viewer is None:
        viewer = napari.Viewer(title="napari-msd demo", show=show)
    viewer.open_sample(PLUGIN, SAMPLE_KEY)
    docks, widgets = {}, {}
    for name in DOCKS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name != DOCKS[0])
    _fill_tab_bars(viewer)
    strokes = viewer.layers["strokes"]
    viewer.layers.selection.active = strokes
    viewer.dims.set_current_step(0, int(strokes.metadata.get("stroke_slices", [0])[0]))
    docks["Train"].raise_()
    return viewer, widgets


def _fill_tab_bars(viewer: napari.Viewer) -> None:
    """Stretch the tabs of tabbed docks over their whole bar: napari's style draws the bar itself like a tab,
    so the bar's space after the last tab would look like an empty fourth tab."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTabBar

    for bar in viewer.window._qt_window.findChildren(QTabBar, options=Qt.FindChildOption.FindDirectChildrenOnly):
        bar.setExpanding(True)


def save_window(viewer: napari.Viewer, path: str | os.PathLike[str], size: tuple[int, int] = (1500, 950)) -> Path:
    """Save a picture of the whole window (canvas and docks) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.window.resize(*size)
    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()
    QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False)
    return path


def run_demo(screenshot: str | os.PathLike[str] | None = None) -> None:
    """Open the demo and run napari; with ``screenshot``, save a picture of the window there and close instead."""
    viewer, _ = open_demo()
    if screenshot is None:
        napari.run()
        return
    try:
        save_window(viewer, screenshot)
    finally:
        viewer.close()
