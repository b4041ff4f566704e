"""The Batch dock: same outputs as ``napari-msd predict``, stop and resume, one-line errors that start nothing,
worker errors, and a clean shutdown when the viewer closes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_msd._widgets.batch_widget import BatchWidget
from napari_msd._widgets.session import get_session
from napari_msd.cli import main
from napari_msd.inference import batch
from napari_msd.io import save_model
from napari_msd.io.outputs import open_output
from napari_msd.models import MSDNet

from helpers.docks import WAIT_MS

CLASSES = ["membrane", "interior"]
TIMEOUT = WAIT_MS  # ms: a ceiling; waits end when the work does


def make_volume(shape, seed=0) -> np.ndarray:
    """Smooth blobs plus noise, uint8."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    smooth = sum(np.sin(g / (3.0 + i) + rng.uniform(0, 6)) for i, g in enumerate(grids))
    return np.clip(128 + 40 * smooth + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)


def make_model(path: Path) -> Path:
    """A tiny MS-D (depth 4) with random head and biases, so both classes appear, saved with full metadata."""
    torch.manual_seed(0)
    net = MSDNet(1, 2, depth=4)
    with torch.no_grad():
        for p in (net.bias, net.head_weight):
            p.normal_(0.0, 0.5)
        x = torch.from_numpy(make_volume((3, 64, 64))[:, None].astype(np.float32) / 255.0)
        margin = net.eval()(x)[:, 0] - net(x)[:, 1]
        net.head_weight *= 3.0 / float(margin.std())
        net.head_bias.zero_()
        net.head_bias[0] = -float(margin.median()) * 3.0 / float(margin.std())
    return save_model(
        path,
        net,
        class_names=list(CLASSES),
        normalization={"method": "percentile", "low": 0.0, "high": 255.0, "percentiles": [1, 99]},
        input_spec={"mode": "2d", "slices": 1, "orientations": ["xy"]},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batch_widget")
    model = make_model(root / "membranes.msd")
    np.save(root / "small.npy", make_volume((3, 64, 64)))
    group = zarr.open_group(root / "vol.zarr", mode="w")
    raw = group.create_array("raw", shape=(2, 48, 56), chunks=(1, 48, 56), dtype="uint8")
    raw[...] = make_volume((2, 48, 56), seed=1)
    np.save(root / "big.npy", make_volume((6, 64, 64), seed=2))
    return {
        "root": root,
        "model": model,
        "small": root / "small.npy",
        "zarr": f"{root / 'vol.zarr'}::raw",
        "big": root / "big.npy",
    }


def _cli(files, image, out: Path, *options: str) -> dict[str, np.ndarray]:
    """What ``napari-msd predict`` writes for the same settings."""
    assert main(["predict", str(files["model"]), str(image), str(out), "--quiet", *options]) == 0
    root = zarr.open_group(out, mode="r")
    return {name: root[name][...] for name in ("labels", "probabilities") if name in root}


def _read(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(path, mode="r")
    return {name: root[name][...] for name in ("labels", "probabilities") if name in root}


def _snapshot(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


@pytest.fixture
def dock(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Batch")
    return viewer, widget


def _idle(w: BatchWidget) -> bool:
    return not w.running and w.run_button.isEnabled() and not w.stop_button.isEnabled() and w.settings.isEnabled()


def _run(w: BatchWidget, qtbot) -> list[str]:
    with qtbot.waitSignal(w.batch_finished, timeout=TIMEOUT) as blocker:
        assert w.start()
        assert not w.run_button.isEnabled() and w.stop_button.isEnabled() and w.running
    assert _idle(w)
    return blocker.args[0]


def test_defaults_and_input_list(make_napari_viewer_proxy, files):
    viewer = make_napari_viewer_proxy()
    session = get_session(viewer)
    session.versions.load(files["model"])  # the Model dock's current model file
    w = BatchWidget(viewer)
    viewer.window.add_dock_widget(w, name="Batch")
    assert w.model_edit.text() == str(files["model"])
    other = files["root"] / "other.msd"
    if not other.exists():
        other.write_bytes(files["model"].read_bytes())
    session.versions.load(other)
    session.versions_changed.emit()
    assert w.model_edit.text() == str(other)  # follows the session until the user picks a file here
    w.model_edit.setText("/mine.msd")
    session.versions.load(files["model"])
    session.versions_changed.emit()
    assert w.model_edit.text() == "/mine.msd"
    assert [w.probabilities.itemText(i) for i in range(w.probabilities.count())] == ["none", "uint8", "float16"]
    devices = [w.device.itemText(i) for i in range(w.device.count())]
    assert devices[:2] == ["auto", "cpu"] and ("cuda" in devices) == torch.cuda.is_available()
    assert w.tile_size.value() == 0 and w.tile_size.text() == "auto"
    assert not w.overwrite.isChecked() and w.open_results.isChecked() and not w.ome_zarr.isChecked()
    assert _idle(w) and w.last_outputs == []
    w.add_inputs(["a.tif", "b.tif", "c.zarr"])
    w.inputs_list.item(1).setSelected(True)
    w.remove_button.click()
    assert w.inputs() == ["a.tif", "c.zarr"]


def test_two_inputs_equal_the_cli_and_open_in_the_viewer(dock, files, tmp_path, qtbot, errors):
    viewer, w = dock
    w.model_edit.setText(str(files["model"]))
    w.add_inputs([files["small"], files["zarr"]])
    folder = tmp_path / "new" / "folder"  # created on demand
    w.output_edit.setText(str(folder))
    w.probabilities.setCurrentText("uint8")
    w.tile_size.setValue(32)
    outputs = _run(w, qtbot)
    assert errors == []
    expected = [folder / "small_prediction.msd.zarr", folder / "vol_raw_prediction.msd.zarr"]
    assert outputs == w.last_outputs == [str(p) for p in expected]
    for image, out in zip((files["small"], files["zarr"]), expected):
        assert open_output(out, writable=False).is_complete()
        reference = _cli(files, image, tmp_path / f"cli_{out.name}", "--tile-size", "32", "--probabilities", "uint8")
        found = _read(out)
        assert set(found) == {"labels", "probabilities"}
        assert np.array_equal(found["labels"], reference["labels"])
        assert np.array_equal(found["probabilities"], reference["probabilities"])
        assert 0.05 < (found["labels"] == 1).mean() < 0.95
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "small_prediction p(membrane)",
        "small_prediction p(interior)",
        "small_prediction",
        "vol_raw_prediction p(membrane)",
        "vol_raw_prediction p(interior)",
        "vol_raw_prediction",
    ]
    labels = viewer.layers["vol_raw_prediction"]
    assert labels.data.shape == (2, 48, 56) and not isinstance(labels.data, np.ndarray)  # lazy, from the store
    assert w.status_label.text().startswith("Done: 2 output(s)")
    assert w.progress_bar.value() == w.progress_bar.maximum()


def test_ome_zarr_output_without_opening(dock, files, tmp_path, qtbot, errors):
    viewer, w = dock
    w.model_edit.setText(str(files["model"]))
    w.add_inputs([files["small"]])
    w.output_edit.setText(str(tmp_path))
    w.ome_zarr.setChecked(True)
    w.open_results.setChecked(False)
    assert _run(w, qtbot) == [str(tmp_path / "small_prediction.msd.ome.zarr")]
    output = open_output(tmp_path / "small_prediction.msd.ome.zarr", writable=False)
    assert output.finalized and output.job.output_format == "ome-zarr"
    reference = _cli(files, files["small"], tmp_path / "cli.zarr")
    assert np.array_equal(output.open_labels()[...], reference["labels"])
    assert len(viewer.layers) == 0 and errors == []


def test_stop_mid_run_keeps_a_resumable_output(dock, files, tmp_path, qtbot, errors):
    viewer, w = dock
    w.model_edit.setText(str(files["model"]))
    w.add_inputs([files["big"], files["small"]])
    w.output_edit.setText(str(tmp_path))
    w.tile_size.setValue(16)  # 6 x 4 x 4 = 96 blocks
    statuses: list[str] = []

    def stop_at_first_block(value: int) -> None:
        if value > 0 and w.running and not statuses:
            statuses.append(w.status_label.text())
            w.stop_button.click()

    w.progress_bar.valueChanged.connect(stop_at_first_block)
    assert _run(w, qtbot) == [] and w.last_outputs == []
    w.progress_bar.valueChanged.disconnect(stop_at_first_block)
    assert statuses[0].startswith("input 1/2: block ") and "ETA" in statuses[0]
    assert "resume" in w.status_label.text() and w.status_label.text().startswith("Stopped at input 1/2")
    out = tmp_path / "big_prediction.msd.zarr"
    partial = open_output(out, writable=False)
    assert 1 <= len(partial.done()) < partial.job.n_blocks == 96
    assert (
        not (tmp_path / "small_prediction.msd.zarr").exists()
        or not open_output(tmp_path / "small_prediction.msd.zarr", writable=False).done()
    )
    assert len(viewer.layers) == 0 and errors == []

    assert _run(w, qtbot) == [str(out), str(tmp_path / "small_prediction.msd.zarr")]  # resumes, then the next input
    assert errors == []
    reference = _cli(files, files["big"], tmp_path / "cli.zarr", "--tile-size", "16")
    assert np.array_equal(_read(out)["labels"], reference["labels"])
    assert [layer.name for layer in viewer.layers] == ["big_prediction", "small_prediction"]


def test_invalid_settings_show_one_error_and_start_nothing(dock, files, tmp_path, errors):
    viewer, w = dock
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("untouched")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    copy = tmp_path / "elsewhere" / "small.npy"
    copy.parent.mkdir()
    copy.write_bytes(files["small"].read_bytes())
    cases = [
        ("", [files["small"]], folder, "Choose a model file"),
        (tmp_path / "nowhere.msd", [files["small"]], folder, "nowhere.msd does not exist"),
        (files["model"], [], folder, "Add at least one input"),
        (files["model"], [files["small"], tmp_path / "missing.tif"], folder, "missing.tif does not exist"),
        (files["model"], [f"{tmp_path / 'gone.zarr'}::raw"], folder, "gone.zarr::raw does not exist"),
        (files["model"], [files["small"]], "", "Choose an output folder"),
        (files["model"], [files["small"]], blocker, "is a file"),
        (files["model"], [files["small"], copy], folder, "would both write small_prediction.msd.zarr"),
    ]
    for model, inputs, output, message in cases:
        w.model_edit.setText(str(model))
        w.inputs_list.clear()
        w.add_inputs(inputs)
        w.output_edit.setText(str(output))
        errors.clear()
        w.run_button.click()
        assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], (message, errors)
        assert _idle(w) and w.status_label.text() == "Idle"
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and blocker.read_text() == "not a folder"
    assert len(viewer.layers) == 0


def test_existing_different_output_is_kept_unless_overwrite(dock, files, tmp_path, qtbot, errors):
    viewer, w = dock
    out = tmp_path / "small_prediction.msd.zarr"
    _cli(files, files["small"], out, "--tile-size", "32")
    before = _snapshot(out)
    w.model_edit.setText(str(files["model"]))
    w.add_inputs([files["small"]])
    w.output_edit.setText(str(tmp_path))
    w.tile_size.setValue(48)
    assert _run(w, qtbot) == []
    assert len(errors) == 1 and "different prediction" in errors[0] and "\n" not in errors[0]
    assert "Traceback" not in errors[0] and w.status_label.text().startswith("Failed: ")
    assert _snapshot(out) == before and len(viewer.layers) == 0

    errors.clear()
    w.overwrite.setChecked(True)
    assert _run(w, qtbot) == [str(out)] and errors == []
    assert open_output(out, writable=False).job.block_shape == (1, 48, 48)


def test_unreadable_input_fails_in_the_worker_before_any_work(dock, files, tmp_path, qtbot, errors):
    _, w = dock
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    w.model_edit.setText(str(files["model"]))
    w.add_inputs([garbage, files["small"]])  # the good one is checked too, but nothing is predicted
    w.output_edit.setText(str(tmp_path / "out"))
    assert _run(w, qtbot) == []
    assert len(errors) == 1 and "garbage.tif" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "out" / "garbage_prediction.msd.zarr").exists()
    assert not (tmp_path / "out" / "small_prediction.msd.zarr").exists()


def test_worker_error_gives_one_notification_and_idles(dock, files, tmp_path, qtbot, errors, monkeypatch):
    _, w = dock
    real_run = batch.run

    def failing_run(job, **kwargs):
        events = real_run(job, **kwargs)
        yield next(events)  # BatchStarted
        yield next(events)  # one block
        raise RuntimeError("disk full\nsecond line")

    monkeypatch.setattr(batch, "run", failing_run)
    w.model_edit.setText(str(files["model"]))
    w.add_inputs([files["small"]])
    w.output_edit.setText(str(tmp_path))
    assert _run(w, qtbot) == []
    assert errors == ["RuntimeError: disk full second line"]
    assert w.status_label.text().startswith("Failed: RuntimeError: disk full")
    assert len(open_output(tmp_path / "small_prediction.msd.zarr", writable=False).done()) == 1  # kept
    assert w.progress_bar.value() == 1  # the dock's bar shows the block that was kept


def test_closing_the_viewer_stops_and_waits_for_the_worker(make_napari_viewer_proxy, files, tmp_path, qtbot, errors):
    viewer = make_napari_viewer_proxy()
    w = BatchWidget(viewer)
    viewer.window.add_dock_widget(w, name="Batch")
    w.model_edit.setText(str(files["model"]))
    w.add_inputs([files["big"]])
    w.output_edit.setText(str(tmp_path))
    w.tile_size.setValue(16)
    assert w.start()
    qtbot.waitUntil(lambda: w.progress_bar.value() > 0, timeout=TIMEOUT)
    viewer.__wrapped__.close()
    assert not w.running and w.last_outputs == [] and errors == []
    partial = open_output(tmp_path / "big_prediction.msd.zarr", writable=False)
    assert 1 <= len(partial.done()) < partial.job.n_blocks


def test_close_workers_without_a_worker_returns_at_once(dock):
    _, w = dock
    assert w.close_workers(timeout=0.01) is True and _idle(w)


def test_dock_through_the_plugin_manager(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    _, widget = viewer.window.add_plugin_dock_widget("napari-msd", "Batch")
    assert isinstance(widget, BatchWidget)
