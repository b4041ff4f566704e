"""An answer within seconds of pressing Train: a random forest fitted on the strokes fills the live preview
before the network's first preview, which then replaces it."""

from __future__ import annotations

import numpy as np

from napari_msd._widgets.conventions import PREVIEW_LAYER

from helpers.docks import WAIT_MS, wait_idle


def test_the_forest_answers_first_and_the_network_replaces_it(docks, qtbot, errors, monkeypatch):
    viewer, train, _ = docks
    shown = []
    original = train._show_preview
    monkeypatch.setattr(
        train,
        "_show_preview",
        lambda event: (
            shown.append(
                "forest" if train.forest_preview_after is None and train.first_preview_after is None else "network"
            ),
            original(event),
        ),
    )
    assert train.start()
    qtbot.waitUntil(lambda: train.forest_preview_after is not None, timeout=WAIT_MS)
    preview = viewer.layers[PREVIEW_LAYER].data
    assert set(np.unique(preview)) <= {1, 2} and len(np.unique(preview)) == 2  # both classes, as painted
    wait_idle(qtbot, train)
    assert errors == []
    assert shown[0] == "forest" and "network" in shown[1:]
    assert train.first_preview_after is not None and train.first_preview_after >= train.forest_preview_after


def test_no_forest_preview_when_retraining_or_without_live_preview(docks, qtbot, errors):
    viewer, train, _ = docks
    train.preview_check.setChecked(False)
    assert train.start()
    wait_idle(qtbot, train)
    assert train.forest_preview_after is None
    train.preview_check.setChecked(True)
    strokes = viewer.layers["strokes"]
    data = strokes.data.copy()
    data[0, 0:4, 0:4] = 1
    strokes.data = data
    assert train.retrain()
    wait_idle(qtbot, train)
    assert errors == [] and train.forest_preview_after is None
