"""The Model dock: manifest, presets, defaults from the Labels layer, loading model files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_msd._widgets.model_widget import PRESETS, ModelWidget
from napari_msd._widgets.session import get_session
from napari_msd.models.msd import msd_parameter_count

NPE2 = Path(sys.executable).with_name("npe2")


def test_manifest_validates():
    result = subprocess.run([str(NPE2), "validate", "napari-msd"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def widget(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-msd", "Model")
    assert isinstance(widget, ModelWidget)
    return viewer, widget


def test_widget_through_plugin_manager(widget):
    viewer, w = widget
    assert w.preset.currentText() == "MS-D 100 layers (paper)"
    assert w.params_label.text() == "45,754"
    assert w.rf_label.text().startswith("550 px")
    assert w.device_label.text().startswith(("CPU, ", "CUDA: ", "Apple MPS"))


def test_presets_update_parameter_count(widget):
    import torch

    from napari_msd.models import GatedUNet, MSDNet, MUNet, UNet

    _, w = widget
    counts = {}
    for i, preset in enumerate(PRESETS):
        w.preset.setCurrentIndex(i)
        counts[preset.name] = int(w.params_label.text().replace(",", ""))
    assert counts["MS-D 100 layers (paper)"] == 45_754
    assert counts["MS-D 50 layers"] == sum(p.numel() for p in MSDNet(1, 2, depth=50).parameters())
    assert counts["U-Net small"] == sum(p.numel() for p in UNet(1, 2, depth=3, base_channels=16).parameters())
    assert counts["U-Net (torch-em default)"] == sum(p.numel() for p in UNet(1, 2).parameters())
    assert counts["MUNet (deep supervision)"] == sum(p.numel() for p in MUNet(1, 2).parameters())
    assert counts["U-Net, gated skips"] == sum(p.numel() for p in GatedUNet(1, 2).parameters())
    assert counts["Ensemble of 3 MS-D (disagreement)"] == 3 * 45_754
    assert len(set(counts.values())) == len(PRESETS) == 7

    w.preset.setCurrentIndex(0)
    w.input_mode.setCurrentText("3D")  # 27 taps per filter
    w.n_classes.setValue(3)
    expected = sum(p.numel() for p in MSDNet(1, 3, depth=100, ndim=3).parameters())
    assert int(w.params_label.text().replace(",", "")) == expected
    session = w.session
    assert (session.arch, session.model_config["ndim"], session.model_config["out_channels"]) == ("msd", 3, 3)
    assert session.input_spec.mode == "3d" and not w.slices.isEnabled() and not w.all_planes.isEnabled()
    assert session.class_names == ["class 1", "class 2", "class 3"]
    assert session.build_model()(torch.zeros(1, 1, 4, 4, 4)).shape == (1, 3, 4, 4, 4)

    w.input_mode.setCurrentText("2.5D")  # neighbouring slices as input channels
    w.slices.setValue(3)
    w.all_planes.setChecked(True)
    assert session.input_spec.to_dict() == {"mode": "2.5d", "slices": 3, "orientations": ["xy", "xz", "yz"]}
    expected = sum(p.numel() for p in MSDNet(3, 3, depth=100).parameters())
    assert int(w.params_label.text().replace(",", "")) == expected
    assert session.build_model()(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_classes_default_from_selected_labels(widget):
    viewer, w = widget
    data = np.zeros((32, 32), np.uint8)
    data[0, :3] = [1, 2, 4]
    layer = viewer.add_labels(data, name="strokes", metadata={"class_names": {1: "membrane", 2: "interior"}})
    viewer.layers.selection.active = layer
    assert w.n_classes.value() == 4
    assert w.session.class_names == ["membrane", "interior", "class 3", "class 4"]
    viewer.add_labels(np.zeros((8, 8), np.uint8), name="empty")  # becomes active: at least 2 classes
    assert w.n_classes.value() == 2
    assert get_session(viewer.__wrapped__) is w.session


def _save_model(path: Path) -> Path:
    from napari_msd.io import save_model
    from napari_msd.models import UNet

    return save_model(
        path,
        UNet(1, 3, depth=2, base_channels=4),
        class_names=["membrane", "mito", "cytosol"],
        normalization={"method": "percentile", "low": 10.0, "high": 240.0},
    )


def test_load_model_adds_a_version(widget, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    _, w = widget
    path = _save_model(tmp_path / "good.msd")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    w.load_button.click()
    session = w.session
    assert session.versions.names() == ["v1"] and session.model_path == path
    assert w.versions.count() == 1 and w.versions.currentRow() == 0 and "good.msd" in w.versions.item(0).text()
    assert "membrane" in w.file_label.text() and "unet" in w.file_label.text()
    assert session.class_names == ["membrane", "mito", "cytosol"] and w.n_classes.value() == 3
    # the new-network settings are untouched by loading: they describe the next new training
    assert session.arch == "msd" and w.params_label.text() == f"{msd_parameter_count(1, 3, 100, 1):,}"


def test_versions_switch_and_save(widget, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from napari_msd.io import load_model

    _, w = widget
    first = _save_model(tmp_path / "first.msd")
    w.load_model_file(first)
    w.load_model_file(first)
    assert w.session.versions.names() == ["v1", "v2"] and w.session.versions.current.name == "v2"
    w.versions.setCurrentRow(0)
    assert w.session.versions.current.name == "v1"
    target = tmp_path / "saved.msd"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    w.save_button.click()
    model, meta = load_model(target)
    assert meta.class_names == ["membrane", "mito", "cytosol"] and w.session.versions.get("v1").path == target
    assert "saved.msd" in w.versions.item(0).text()


@pytest.mark.parametrize("content", [b"not a model at all", b""])
def test_corrupt_model_file_shows_error_and_changes_nothing(widget, tmp_path, monkeypatch, content):
    from qtpy.QtWidgets import QFileDialog

    import napari_msd._widgets.model_widget as module

    _, w = widget
    good = _save_model(tmp_path / "good.msd")
    w.load_model_file(good)
    bad = tmp_path / "bad.msd"
    bad.write_bytes(content)
    errors = []
    monkeypatch.setattr(module, "show_error", errors.append)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(bad), ""))
    before = (
        w.preset.currentText(),
        w.params_label.text(),
        w.file_label.text(),
        w.n_classes.value(),
        w.session.versions.names(),
        w.session.class_names,
    )
    w.load_button.click()
    assert len(errors) == 1 and "bad.msd" in errors[0] and "\n" not in errors[0]
    assert (
        w.preset.currentText(),
        w.params_label.text(),
        w.file_label.text(),
        w.n_classes.value(),
        w.session.versions.names(),
        w.session.class_names,
    ) == before


def test_cancelled_dialog_changes_nothing(widget, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    _, w = widget
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("", ""))
    before = (w.session.versions.names(), w.session.class_names)
    w.load_button.click()
    assert (w.session.versions.names(), w.session.class_names) == before


def test_export_bioimageio_in_a_worker_and_load_it_back(widget, tmp_path, monkeypatch, errors):
    from qtpy.QtWidgets import QFileDialog

    from napari_msd.io import load_model
    from napari_msd.io.bioimageio import is_package

    _, w = widget
    assert not w.export_button.isEnabled()  # no version yet
    w.load_model_file(_save_model(tmp_path / "good.msd"))
    assert w.export_button.isEnabled()
    target = tmp_path / "good.zip"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    w.export_button.click()
    work = w.export_work
    assert work is not None and not w.export_button.isEnabled()  # running in a worker; a second click waits
    assert work.wait(120) and work.error is None, errors
    assert w.export_work is None and w.export_button.isEnabled() and w.last_export == target
    assert is_package(target) and not errors
    expected = load_model(tmp_path / "good.msd")[1].to_dict()
    assert load_model(target)[1].to_dict() == expected

    assert w.load_model_file(target)  # Load model accepts the package: a new version, the same model
    assert w.session.versions.names() == ["v1", "v2"] and "good.zip" in w.versions.item(1).text()
    assert w.session.class_names == ["membrane", "mito", "cytosol"]


def test_export_never_replaces_a_file_the_dialog_did_not_confirm(widget, tmp_path, monkeypatch, errors):
    from qtpy.QtWidgets import QFileDialog

    _, w = widget
    w.load_model_file(_save_model(tmp_path / "good.msd"))
    taken = tmp_path / "taken.zip"
    taken.write_bytes(b"keep")
    # typed without .zip: the dialog confirmed "taken", never "taken.zip"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / "taken"), ""))
    w.export_button.click()
    assert w.export_work.wait(120)
    assert taken.read_bytes() == b"keep" and len(errors) == 1 and "already exists" in errors[0]
    assert "\n" not in errors[0] and w.export_button.isEnabled()
