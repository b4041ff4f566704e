"""``napari-msd demo``: a viewer with the ISBI sample, its example strokes and the Model dock."""

from __future__ import annotations

import os
from pathlib import Path

import napari  # at import time, so a missing GUI fails where the CLI imports this module
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-msd"
SAMPLE_KEY = "isbi_strokes"
MODEL_DOCK = "Model"


def run_demo(screenshot: str | os.PathLike[str] | None = None) -> None:
    """Open napari with the sample data and the Model dock, the strokes layer selected.

    With ``screenshot``, save a picture of the whole window (dock included) to that path and close the viewer
    instead of running the event loop.
    """
    viewer = napari.Viewer(title="napari-msd demo")
    viewer.open_sample(PLUGIN, SAMPLE_KEY)
    viewer.window.add_plugin_dock_widget(PLUGIN, MODEL_DOCK)
    strokes = viewer.layers["strokes"]
    viewer.layers.selection.active = strokes
    viewer.dims.set_current_step(0, int(strokes.metadata.get("stroke_slices", [0])[0]))
    if screenshot is None:
        napari.run()
        return
    path = Path(screenshot)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        viewer.window.resize(1400, 900)
        for _ in range(5):
            QApplication.processEvents()
        viewer.reset_view()
        QApplication.processEvents()
        viewer.screenshot(str(path), canvas_only=False)
    finally:
        viewer.close()
