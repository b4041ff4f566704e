"""The napari readers: prediction outputs open in napari as a Labels layer with class colours and names (and one
probability image per class), MRC files as one lazy image; anything else is left to other readers.

``viewer.open(path, plugin=None)`` is what File > Open, drag and drop and ``napari PATH`` do (plain
``viewer.open(path)`` means napari's builtin reader); a reader choice is raised there as MultipleReaderError.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import mrcfile
import napari
import numpy as np
import pytest
import tifffile
import zarr
from napari.errors import MultipleReaderError
from napari.settings import NapariSettings

from napari_msd._reader import contrast_limits, get_mrc_reader, get_reader, read_mrc, read_prediction
from napari_msd.io import images
from napari_msd.io.images import ImageReadError
from napari_msd.io.job import JobSpec
from napari_msd.io.outputs import OUTPUT_SUFFIXES, create_or_resume, open_output

NAMES = ["membrane", "mitochondrion", "cytoplasm"]
COLORS = ["#ff40ff", "#40ff40", "#3070ff"]
SHAPE = (4, 40, 36)


@pytest.fixture(autouse=True)
def _fresh_napari_settings(monkeypatch):
    """A fresh napari profile kept in memory: reader preferences never touch the user's settings file."""
    monkeypatch.setattr(napari.settings, "_SETTINGS", NapariSettings(config_path=None))


def _preferences() -> dict[str, str]:
    return dict(napari.settings.get_settings().plugins.extension2reader)


def _truth() -> tuple[np.ndarray, np.ndarray]:
    """Labels 1..3 and float32 probabilities (3, *SHAPE) with a clear spatial pattern."""
    grids = np.indices(SHAPE, dtype=np.float32)
    logits = np.stack([np.sin(0.2 * (k + 1) * grids[1] + 0.3 * grids[2] + k) for k in range(3)])
    probs = np.exp(3 * logits) / np.exp(3 * logits).sum(0)
    return (probs.argmax(0) + 1).astype(np.uint8), probs.astype(np.float32)


def _write_output(path: Path, *, probabilities: str = "uint8", finalize: bool = True, labels: bool = True):
    fmt = "ome-zarr" if path.name.endswith(".ome.zarr") else "zarr"
    job = JobSpec(
        model_sha256="cd" * 32,
        input="raw.zarr",
        input_shape=SHAPE,
        block_shape=(1, 16, 16),
        halo=4,
        n_classes=3,
        class_names=NAMES,
        class_colors=COLORS,
        probabilities=probabilities,
        labels=labels,
        output_format=fmt,
    )
    out = create_or_resume(path, job)
    lab, prob = _truth()
    for index in np.ndindex(*job.grid):
        region = job.block_slices(index)
        out.write_block(
            index,
            region,
            labels=lab[region] if labels else None,
            probabilities=prob[(slice(None), *region)] if probabilities != "none" else None,
        )
    if finalize:
        out.finalize()
    return out, lab, prob


def _rgba(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)] + [1.0], np.float32)


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
    job = JobSpec(
        model_sha256="cd" * 32,
        input="raw.zarr",
        input_shape=SHAPE,
        block_shape=(1, 16, 16),
        n_classes=3,
        class_names=NAMES,
        class_colors=COLORS,
    )
    out = create_or_resume(path, job)
    lab, _ = _truth()
    region = job.block_slices((0, 0, 0))
    out.write_block((0, 0, 0), region, labels=lab[region])
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels" and kwargs["metadata"]["napari_msd"]["blocks_done"] == 1
    stored = np.asarray(data[...])
    assert np.array_equal(stored[region], lab[region]) and stored.sum() == lab[region].sum()
    assert open_output(path).done() == {(0, 0, 0)}


# -- prediction outputs without a reader choice ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["result.msd.zarr", "result.msd.ome.zarr"])
def test_msd_named_output_opens_without_a_reader_choice(make_napari_viewer_proxy, tmp_path, name):
    assert name.endswith(OUTPUT_SUFFIXES)
    path = tmp_path / name
    _, lab, _ = _write_output(path)
    viewer = make_napari_viewer_proxy()
    # every folder reader is offered for every folder, so a fresh profile asks once (napari's own behaviour) ...
    with pytest.raises(MultipleReaderError):
        viewer.open(str(path), plugin=None)
    # ... until napari-msd has read anything (an output, an MRC): it then prefers itself for *.msd[.ome].zarr/
    assert get_reader(str(tmp_path / "missing.zarr")) is None and _preferences() == {}
    assert get_reader(str(path)) is read_prediction
    assert _preferences() == {"*.msd.zarr/": "napari-msd", "*.msd.ome.zarr/": "napari-msd"}
    layers = viewer.open(str(path), plugin=None)
    assert [layer.name for layer in layers] == [f"p({n})" for n in NAMES] + ["prediction"]
    _check_labels_layer(viewer, viewer.layers["prediction"], lab)


def test_file_open_of_an_output_shows_no_reader_dialog(make_napari_viewer, tmp_path, monkeypatch):
    import napari._qt.qt_viewer as qt_viewer

    def dialog(*args, **kwargs):
        raise AssertionError("napari asked which reader to use")

    monkeypatch.setattr(qt_viewer, "handle_gui_reading", dialog)
    mrc = _write_mrc(tmp_path / "tomo.mrc", np.ones((3, 8, 8), np.float32))
    path = tmp_path / "result.msd.zarr"
    _, lab, _ = _write_output(path, probabilities="none")
    viewer = make_napari_viewer()
    viewer.window._qt_viewer._qt_open([str(mrc)], stack=False)  # File > Open: one reader, no dialog
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)  # the preference that opening added decides
    assert [layer.name for layer in viewer.layers] == ["tomo", "prediction"]
    assert np.array_equal(np.asarray(viewer.layers["prediction"].data[...]), lab)


def test_output_preferences_keep_the_users_choice(tmp_path):
    napari.settings.get_settings().plugins.extension2reader = {"*.msd.zarr/": "napari", "*.tif": "napari"}
    path = tmp_path / "result.msd.zarr"
    _write_output(path, finalize=False)
    assert get_reader(str(path)) is read_prediction
    assert _preferences() == {"*.msd.zarr/": "napari", "*.tif": "napari", "*.msd.ome.zarr/": "napari-msd"}


def test_older_output_names_still_open_with_the_plugin(make_napari_viewer_proxy, tmp_path):
    path = tmp_path / "result.zarr"
    _, lab, _ = _write_output(path, probabilities="none")
    get_reader(str(path))  # preferences added, but only for *.msd.zarr folders
    viewer = make_napari_viewer_proxy()
    with pytest.raises(MultipleReaderError):  # napari asks (choose "MS-D segmentation") ...
        viewer.open(str(path), plugin=None)
    viewer.open(str(path), plugin="napari-msd")  # ... or the plugin is named
    assert np.array_equal(np.asarray(viewer.layers["prediction"].data[...]), lab)


# -- MRC ---------------------------------------------------------------------------------------------------------------


def _write_mrc(path: Path, data: np.ndarray, voxel_size: tuple[float, float, float] | None = None) -> Path:
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        if voxel_size is not None:
            mrc.voxel_size = voxel_size  # (x, y, z) in Å
    return path


def test_mrc_opens_as_one_lazy_image_without_a_reader_choice(make_napari_viewer_proxy, tmp_path, monkeypatch):
    volume = np.random.default_rng(0).normal(size=(40, 48, 56)).astype(np.float32)
    volume[5, 0, 0] = 1e6  # one hot pixel must not set the display range
    path = _write_mrc(tmp_path / "tomo.mrc", volume, voxel_size=(13.5, 13.5, 20.0))
    read: list[int] = []
    getitem = images.LazyArray.__getitem__
    monkeypatch.setattr(images.LazyArray, "__getitem__", lambda self, key: read.append(1) or getitem(self, key))

    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(path), plugin=None)  # File > Open: napari has no reader for .mrc, napari-msd does
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert isinstance(layer, napari.layers.Image) and layer.name == "tomo"
    assert layer.data.shape == volume.shape and layer.data.dtype == np.float32
    assert isinstance(layer.data, da.Array) and layer.data.chunksize == (1, 48, 56)  # read slice by slice
    assert np.allclose(layer.scale, (20.0, 13.5, 13.5))  # Z, Y, X in Å
    assert layer.metadata["voxel_size_angstrom"] == [20.0, 13.5, 13.5]
    low, high = layer.contrast_limits
    assert -4 < low < -2 and 2 < high < 4
    viewer.dims.set_current_step(0, 17)
    assert viewer.screenshot(canvas_only=True).ndim == 3  # drawn
    assert 0 < len(read) < volume.shape[0] // 2  # the sampled and displayed slices, never the whole volume
    assert np.array_equal(layer.data[3:5].compute(), volume[3:5])


def test_mrc_family_suffixes_and_a_2d_image_without_voxel_size(tmp_path):
    image = np.arange(30 * 20, dtype=np.int16).reshape(30, 20)
    for name in ("a.rec", "b.ST", "c.map", "d.ali", "e.mrcs"):
        assert get_mrc_reader(str(_write_mrc(tmp_path / name, image))) is read_mrc
    assert get_mrc_reader([str(tmp_path / "a.rec")]) is read_mrc
    [(data, meta, kind)] = read_mrc(str(tmp_path / "b.ST"))
    assert kind == "image" and meta["name"] == "b" and "scale" not in meta  # the header gives no voxel size
    assert np.array_equal(data.compute(), image)
    assert meta["contrast_limits"][0] < meta["contrast_limits"][1]


def test_mrc_reader_declines_other_paths_and_refuses_broken_files_in_one_line(tmp_path):
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "folder.mrc").mkdir()
    for path in ("image.tif", "folder.mrc", "missing.mrc"):
        assert get_mrc_reader(str(tmp_path / path)) is None
    assert get_mrc_reader([str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")]) is None
    assert get_mrc_reader(None) is None

    broken = _write_mrc(tmp_path / "broken.mrc", np.zeros((4, 32, 32), np.float32))
    broken.write_bytes(broken.read_bytes()[:2000])  # cut short
    reader = get_mrc_reader(str(broken))
    with pytest.raises(ImageReadError, match="broken.mrc") as err:
        reader(str(broken))
    assert "\n" not in str(err.value)


def test_contrast_limits_read_a_few_subsampled_slices():
    class Recorder:
        shape, dtype, ndim = (500, 4000, 3000), np.dtype(np.uint8), 3

        def __init__(self):
            self.keys = []

        def __getitem__(self, key):
            self.keys.append(key)
            z = key[0]
            plane = np.broadcast_to(np.uint8(z % 200 + 10), self.shape[1:])  # no memory: a view of one value
            return plane[key[1:]]

    volume = Recorder()
    low, high = contrast_limits(volume)
    assert len(volume.keys) == 7 and volume.keys[0][0] == 0 and volume.keys[-1][0] == 499
    assert all(key[1].step == key[2].step == 4 for key in volume.keys)  # 12 Mpx slices read at 1/16
    assert 10 <= low < high <= 209
    assert contrast_limits(np.full((5, 6), 3.0)) == (3.0, 4.0)  # flat image: one unit wide
    assert contrast_limits(np.full((5, 6), np.nan)) == (0.0, 1.0)
