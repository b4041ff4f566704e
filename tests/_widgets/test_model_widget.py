"""The Model dock: manifest, presets, defaults from the Labels layer, loading model files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_msd._widgets.model_widget import PRESETS, ModelWidget
from napari_msd.models.msd import msd_parameter_count
from napari_msd._widgets.session import get_session

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

    from napari_msd.models import MSDNet, UNet

    _, w = widget
    counts = {}
    for i, preset in enumerate(PRESETS):
        w.preset.setCurrentIndex(i)
        counts[preset.name] = int(w.params_label.text().replace(",", ""))
    assert counts["MS-D 100 layers (paper)"] == 45_754
    assert counts["MS-D 50 layers"] == sum(p.numel() for p in MSDNet(1, 2, depth=50).parameters())
    assert counts["U-Net small"] == sum(p.numel() for p in UNet(1, 2, depth=3, base_channels=16).parameters())
    assert counts["U-Net (torch-em default)"] == sum(p.numel() for p in UNet(1, 2).parameters())
    assert len(set(counts.values())) == 4

    w.preset.setCurrentIndex(0)
    w.ndim.setCurrentIndex(1)  # 3D: 27 taps per filter
    w.in_channels.setValue(2)
    w.n_classes.setValue(3)
    expected = sum(p.numel() for p in MSDNet(2, 3, depth=100, ndim=3).parameters())
    assert int(w.params_label.text().replace(",", "")) == expected
    session = w.session
    assert (session.arch, session.model_config["ndim"], session.model_config["out_channels"]) == ("msd", 3, 3)
    assert session.class_names == ["class 1", "class 2", "class 3"]
    assert session.build_model()(torch.zeros(1, 2, 4, 4, 4)).shape == (1, 3, 4, 4, 4)


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

    return save_model(path, UNet(1, 3, depth=2, base_channels=4), class_names=["membrane", "mito", "cytosol"],
                      normalization={"method": "percentile", "low": 10.0, "high": 240.0})


def test_load_model_shows_metadata(widget, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    _, w = widget
    path = _save_model(tmp_path / "good.msd")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    w.load_button.click()
    assert w.preset.currentText() == "From file: good.msd"
    assert "membrane" in w.file_label.text() and "unet" in w.file_label.text()
    assert w.n_classes.value() == 3 and not w.n_classes.isEnabled()
    assert w.session.model_path == path and w.session.class_names == ["membrane", "mito", "cytosol"]
    assert w.session.arch == "unet" and w.session.model_config["base_channels"] == 4
    w.preset.setCurrentIndex(0)  # back to a new network
    assert w.session.model_path is None and w.n_classes.isEnabled() and w.n_classes.value() == 3
    assert w.params_label.text() == f"{msd_parameter_count(1, 3, 100, 1):,}"


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
    before = (w.preset.currentText(), w.params_label.text(), w.file_label.text(), w.n_classes.value(),
              repr(w.session))
    w.load_button.click()
    assert len(errors) == 1 and "bad.msd" in errors[0] and "\n" not in errors[0]
    assert (w.preset.currentText(), w.params_label.text(), w.file_label.text(), w.n_classes.value(),
            repr(w.session)) == before


def test_cancelled_dialog_changes_nothing(widget, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    _, w = widget
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("", ""))
    before = repr(w.session)
    w.load_button.click()
    assert repr(w.session) == before
