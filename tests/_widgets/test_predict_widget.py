"""The Predict dock in a real viewer: streaming prediction equal to the core's, the view first, outputs on disk for
dask images, stop, uncertainty review, corrections into the training labels with undo, and bad inputs."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_msd._widgets.predict_widget import BlockDone
from napari_msd._widgets.session import get_session
from napari_msd._widgets.viewport import camera
from napari_msd.inference.predictor import Predictor
from napari_msd.inference.uncertainty import entropy, to_uint8
from napari_msd.io.model_file import ModelMetadata
from napari_msd.models import MSDNet

from helpers.docks import SHAPE, WAIT_MS, wait_idle


def add_version(viewer, mode: str = "2d", slices: int = 1):
    """An untrained tiny MS-D as the session's current version (prediction needs no training)."""
    torch.manual_seed(0)
    model = MSDNet(slices, 2, depth=6).eval()
    meta = ModelMetadata(
        arch="msd",
        config=model.config(),
        class_names=["dark", "bright"],
        receptive_field=int(model.receptive_field),
        class_colors=["#ff0000", "#00ff00"],
        normalization={"method": "percentile", "low": 0.1, "high": 1.0, "percentiles": [1, 99]},
        input={"mode": mode, "slices": slices, "orientations": ["xy"]},
    )
    session = get_session(viewer)
    version = session.versions.add(model, meta)
    session.versions_changed.emit()
    return version


def reference(version, image):
    probs = Predictor(version.model, version.metadata).predict(image)
    return probs.argmax(0) + 1, probs


def test_prediction_matches_the_core_and_streams_the_view_first(docks, qtbot, errors):
    viewer, _, predict = docks
    version = add_version(viewer)
    predict.probabilities_check.setChecked(True)
    viewer.dims.set_current_step(0, 3)
    regions = []
    on_block = predict._on_block
    predict._on_block = lambda event: (isinstance(event, BlockDone) and regions.append(event.region), on_block(event))
    assert predict.predict()
    wait_idle(qtbot, predict)
    assert errors == []
    image = viewer.layers["em"].data
    labels, probs = reference(version, image)
    out = viewer.layers["prediction (v1)"]
    assert isinstance(out.data, np.ndarray) and out.data.shape == SHAPE
    assert (out.data == labels).mean() > 0.999
    unc = viewer.layers["uncertainty (v1)"].data
    assert np.abs(unc.astype(int) - to_uint8(entropy(probs)).astype(int)).max() <= 1
    p_bright = viewer.layers["p(bright) (v1)"].data
    assert np.abs(p_bright.astype(int) - np.rint(probs[1] * 255).astype(int)).max() <= 1
    assert regions[0][0] == slice(3, 4)  # the plane on screen came first
    assert len(regions) == 4 and "done" in predict.status.text()
    assert predict.status.text().endswith(" s (float32)")  # MS-D says its arithmetic (float32 in the tests)
    assert get_session(viewer).predictions[out].version == "v1"
    assert predict.predict_button.isEnabled() and not predict.stop_button.isEnabled()


def test_dask_image_predicts_into_zarr_on_disk(docks, qtbot, errors):
    viewer, _, predict = docks
    version = add_version(viewer)
    image = viewer.layers["em"].data
    viewer.add_image(da.from_array(image, chunks=(1, 32, 32)), name="lazy")
    predict.image_combo.setCurrentText("lazy")
    predict.predict()
    wait_idle(qtbot, predict)
    out = viewer.layers["prediction (v1)"]
    assert isinstance(out.data, zarr.Array) and isinstance(viewer.layers["uncertainty (v1)"].data, zarr.Array)
    assert str(get_session(viewer).workspace) in str(out.data.store)
    assert (out.data[...] == reference(version, image)[0]).mean() > 0.999
    assert errors == []


def test_stop_keeps_what_was_predicted(docks, qtbot, errors):
    viewer, _, predict = docks
    add_version(viewer)
    big = np.random.default_rng(1).random((60, 64, 64)).astype(np.float32)
    predict.image_combo.choose(viewer.add_image(big, name="stack"))
    predict.predict()
    qtbot.waitUntil(lambda: predict._run.done >= 1, timeout=WAIT_MS)
    predict.stop_button.click()
    wait_idle(qtbot, predict)
    done = predict._run.done
    assert 1 <= done < 60 and "stopped" in predict.status.text()
    written = (viewer.layers["prediction (v1)"].data > 0).any(axis=(1, 2)).sum()
    assert written >= done and predict.predict_button.isEnabled() and errors == []


def test_next_uncertain_region_visits_regions_most_uncertain_first(docks, qtbot):
    viewer, _, predict = docks
    add_version(viewer)
    predict.predict()
    wait_idle(qtbot, predict)
    layer = viewer.layers["prediction (v1)"]
    unc = viewer.layers["uncertainty (v1)"].data.astype(float) / 255
    seen = []
    while (region := predict.next_uncertain_region()) is not None:
        seen.append(region)
        z = region[0].start
        assert viewer.dims.current_step[0] == z
        assert np.allclose(camera(viewer).center[-2:], [(r.start + r.stop - 1) / 2 for r in region[1:]])
        assert viewer.layers.selection.active.name == layer.name and layer.mode == "paint"
    means = [unc[r].mean() for r in seen]
    assert len(seen) == SHAPE[0] and means == sorted(means, reverse=True)
    assert "100%" in predict.review_status.text()


def test_use_corrections_copies_repainted_pixels_with_undo(docks, qtbot, errors):
    viewer, train, predict = docks
    add_version(viewer)
    predict.predict()
    wait_idle(qtbot, predict)
    prediction, strokes = viewer.layers["prediction (v1)"], viewer.layers["strokes"]
    before = strokes.data.copy()
    predicted = prediction.data.copy()
    fix = np.zeros(SHAPE, bool)
    fix[0, 40:55, 40:55] = True
    prediction.data[fix] = np.where(predicted[fix] == 1, 2, 1)  # repaint the other class
    prediction.data[3, :5, :5] = 0  # erased: not a correction
    n = predict.use_corrections()
    assert n == fix.sum() and errors == []
    after = strokes.data
    assert np.array_equal(after[fix], prediction.data[fix]) and np.array_equal(after[~fix], before[~fix])
    strokes.undo()
    assert np.array_equal(strokes.data, before)
    assert predict.use_corrections() == n  # the edits are still there: applying again is the same


def test_corrections_need_a_prediction_of_the_training_image(docks, qtbot, errors):
    viewer, train, predict = docks
    assert predict.use_corrections() == 0 and "predict first" in errors[-1]
    add_version(viewer)
    other = viewer.add_image(np.random.default_rng(2).random(SHAPE).astype(np.float32), name="other")
    predict.image_combo.choose(other)
    predict.predict()
    wait_idle(qtbot, predict)
    viewer.layers["prediction (v1)"].data[0, 0, 0] = 2
    assert predict.use_corrections() == 0 and "'other'" in errors[-1] and "'em'" in errors[-1]
    assert len(errors) == 2 and not viewer.layers["strokes"].data[0, 0, 0]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("no model", "no model yet"),
        ("rgb", "RGB"),
        ("4d", "4 dimensions"),
        ("2.5d on 2d", "needs a ZYX volume"),
    ],
)
def test_bad_input_one_message_no_layer(docks, errors, case, needle):
    viewer, _, predict = docks
    if case == "2.5d on 2d":
        add_version(viewer, "2.5d", 3)
        predict.image_combo.choose(viewer.add_image(np.zeros(SHAPE[1:], np.float32), name="plane"))
    elif case != "no model":
        add_version(viewer)
        data, kwargs = (
            (np.zeros((64, 64, 3), np.uint8), {"rgb": True})
            if case == "rgb"
            else (np.zeros((2, *SHAPE), np.float32), {})
        )
        predict.image_combo.choose(viewer.add_image(data, name=case, **kwargs))
    names = [layer.name for layer in viewer.layers]
    assert not predict.predict()
    assert len(errors) == 1 and needle in errors[0] and "\n" not in errors[0]
    assert [layer.name for layer in viewer.layers] == names and predict.work is None


def test_worker_error_becomes_a_notification(docks, qtbot, errors, monkeypatch):
    viewer, _, predict = docks
    add_version(viewer)

    def broken(self, *args, **kwargs):
        raise OSError("disk full (simulated)")
        yield

    monkeypatch.setattr(Predictor, "blocks", broken)
    predict.predict()
    wait_idle(qtbot, predict)
    assert len(errors) == 1 and "disk full" in errors[0]
    assert predict.predict_button.isEnabled() and not predict.stop_button.isEnabled()
