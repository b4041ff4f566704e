"""The napari reader: prediction outputs open in napari as a Labels layer with class colours and names (and one
probability image per class); anything else is left to other readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import napari
import tifffile
import zarr

from napari_msd._reader import get_reader, read_prediction
from napari_msd.io.outputs import JobSpec, create_or_resume, open_output

NAMES = ["membrane", "mitochondrion", "cytoplasm"]
COLORS = ["#ff40ff", "#40ff40", "#3070ff"]
SHAPE = (4, 40, 36)


def _truth() -> tuple[np.ndarray, np.ndarray]:
    """Labels 1..3 and float32 probabilities (3, *SHAPE) with a clear spatial pattern."""
    grids = np.indices(SHAPE, dtype=np.float32)
    logits = np.stack([np.sin(0.2 * (k + 1) * grids[1] + 0.3 * grids[2] + k) for k in range(3)])
    probs = np.exp(3 * logits) / np.exp(3 * logits).sum(0)
    return (probs.argmax(0) + 1).astype(np.uint8), probs.astype(np.float32)


def _write_output(path: Path, *, probabilities: str = "uint8", finalize: bool = True, labels: bool = True):
    fmt = "ome-zarr" if path.name.endswith(".ome.zarr") else "zarr"
    job = JobSpec(model_sha256="cd" * 32, input="raw.zarr", input_shape=SHAPE, block_shape=(1, 16, 16), halo=4,
                  n_classes=3, class_names=NAMES, class_colors=COLORS, probabilities=probabilities, labels=labels,
                  output_format=fmt)
    out = create_or_resume(path, job)
    lab, prob = _truth()
    for index in np.ndindex(*job.grid):
        region = job.block_slices(index)
        out.write_block(index, region, labels=lab[region] if labels else None,
                        probabilities=prob[(slice(None), *region)] if probabilities != "none" else None)
    if finalize:
        out.finalize()
    return out, lab, prob


def _rgba(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)] + [1.0], np.float32)


def _check_labels_layer(viewer, layer, expected: np.ndarray) -> None:
    assert isinstance(layer, napari.layers.Labels) and layer.name == "prediction"
    data = layer.data[0] if layer.multiscale else layer.data
    assert isinstance(data, zarr.Array)  # lazy: the store's array, not a copy in memory
    assert np.array_equal(np.asarray(data[...]), expected)
    for value, color in enumerate(COLORS, start=1):
        assert np.allclose(layer.colormap.map(value), _rgba(color), atol=1e-3)
    assert layer.colormap.map(0)[3] == 0  # unpredicted pixels are transparent
    features = layer.features
    assert list(features["index"]) == [0, 1, 2, 3]
    assert list(features["class"]) == ["unlabeled", *NAMES]
    assert layer.metadata["class_names"] == {1: "membrane", 2: "mitochondrion", 3: "cytoplasm"}
    # the status bar names the class under the cursor
    z, y, x = np.argwhere(expected[:, ::4, ::4] == 2)[0] * (1, 4, 4)
    viewer.dims.set_current_step(0, z)
    viewer.layers.selection.active = layer
    status = layer.get_status((z, y, x), world=True)
    assert "class: mitochondrion" in status["coordinates"], status


def test_plain_zarr_output_opens_with_class_names_colours_and_probabilities(make_napari_viewer_proxy, tmp_path):
    path = tmp_path / "result.zarr"
    _, lab, prob = _write_output(path, finalize=False)
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(path), plugin="napari-msd")
    assert [layer.name for layer in layers] == [f"p({n})" for n in NAMES] + ["prediction"]
    labels = viewer.layers["prediction"]
    assert not labels.multiscale
    _check_labels_layer(viewer, labels, lab)
    for k, name in enumerate(NAMES):
        image = viewer.layers[f"p({name})"]
        assert isinstance(image, napari.layers.Image) and not image.visible and not image.multiscale
        assert tuple(image.contrast_limits) == (0, 255)
        assert not isinstance(image.data, np.ndarray)  # lazy
        assert np.abs(np.asarray(image.data) - prob[k] * 255).max() <= 0.5 + 1e-3
        assert np.allclose(image.colormap.colors[-1], _rgba(COLORS[k]), atol=1e-3)


def test_finalized_ome_zarr_output_opens_as_multiscale_layers(make_napari_viewer_proxy, tmp_path):
    path = tmp_path / "result.ome.zarr"
    out, lab, prob = _write_output(path, probabilities="float16")
    n_levels = len(out.open_labels(multiscale=True))
    assert n_levels >= 2
    viewer = make_napari_viewer_proxy()
    viewer.open(str(path), plugin="napari-msd")
    labels = viewer.layers["prediction"]
    assert labels.multiscale and len(labels.data) == n_levels
    _check_labels_layer(viewer, labels, lab)
    for level, stored in zip(labels.data, out.open_labels(multiscale=True)):
        assert level.shape == stored.shape and np.array_equal(np.asarray(level[...]), stored[...])
    assert labels.metadata["napari_msd"]["finalized"] is True
    for k, name in enumerate(NAMES):
        image = viewer.layers[f"p({name})"]
        assert image.multiscale and len(image.data) == n_levels and not image.visible
        assert tuple(image.contrast_limits) == (0, 1)
        assert np.allclose(np.asarray(image.data[0]).astype(np.float32), prob[k], atol=1e-3)
    image.visible = True  # float16 data renders
    viewer.dims.set_current_step(0, 1)
    assert image.loaded and viewer.screenshot(canvas_only=True).ndim == 3


def test_labels_only_ome_zarr_output(make_napari_viewer_proxy, tmp_path):
    path = tmp_path / "labels.ome.zarr"
    _, lab, _ = _write_output(path, probabilities="none")
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(path), plugin="napari-msd")
    assert [layer.name for layer in layers] == ["prediction"]
    _check_labels_layer(viewer, viewer.layers["prediction"], lab)


def test_reader_layer_data_without_a_viewer(tmp_path):
    path = tmp_path / "probs.zarr"
    _write_output(path, labels=False, finalize=False)
    reader = get_reader(str(path))
    assert reader is read_prediction
    layers = reader(str(path))
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [(f"p({n})", "image") for n in NAMES]
    assert get_reader([str(path)]) is read_prediction  # napari may pass a one-element list


def test_reader_declines_what_is_not_a_prediction_output(tmp_path):
    folder = tmp_path / "photos.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("not zarr")
    assert get_reader(str(folder)) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None

    foreign = zarr.create_array(store=tmp_path / "raw.zarr", shape=(8, 8), chunks=(8, 8), dtype="uint8")
    foreign[...] = 1
    assert get_reader(str(tmp_path / "raw.zarr")) is None
    group = zarr.open_group(tmp_path / "group.zarr", mode="w", attributes={"ome": {"version": "0.5"}})
    group.create_array("s0", shape=(8, 8), dtype="uint8")
    assert get_reader(str(tmp_path / "group.zarr")) is None

    tifffile.imwrite(tmp_path / "image.tif", np.zeros((8, 8), np.uint8))
    assert get_reader(str(tmp_path / "image.tif")) is None

    started = tmp_path / "started.zarr"  # creation cut short: no job recorded yet
    zarr.open_group(started, mode="w", attributes={"napari_msd": {"layout": 1, "job": None}})
    assert get_reader(str(started)) is None
    assert get_reader([str(folder), str(tmp_path / "raw.zarr")]) is None


def test_partial_output_opens_with_unpredicted_pixels_unlabeled(tmp_path):
    path = tmp_path / "partial.zarr"
    job = JobSpec(model_sha256="cd" * 32, input="raw.zarr", input_shape=SHAPE, block_shape=(1, 16, 16),
                  n_classes=3, class_names=NAMES, class_colors=COLORS)
    out = create_or_resume(path, job)
    lab, _ = _truth()
    region = job.block_slices((0, 0, 0))
    out.write_block((0, 0, 0), region, labels=lab[region])
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels" and kwargs["metadata"]["napari_msd"]["blocks_done"] == 1
    stored = np.asarray(data[...])
    assert np.array_equal(stored[region], lab[region]) and stored.sum() == lab[region].sum()
    assert open_output(path).done() == {(0, 0, 0)}
