"""The "Model" dock: choose a network (preset, channels, classes, 2D/3D) or load a trained model file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import QSignalBlocker
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .session import Session, get_session

if TYPE_CHECKING:
    import napari

MODEL_FILE_FILTER = "napari-msd models (*.msd *.safetensors);;All files (*)"
NO_FILE = "No model file loaded: a new network will be trained."


@dataclass(frozen=True)
class Preset:
    """A named architecture; ``config`` lacks channels and ndim, which the dock adds."""

    name: str
    arch: str
    config: dict[str, Any] = field(default_factory=dict)


PRESETS = (
    Preset("MS-D 100 layers (paper)", "msd", {"depth": 100, "width": 1, "dilations": list(range(1, 11))}),
    Preset("MS-D 50 layers", "msd", {"depth": 50, "width": 1, "dilations": list(range(1, 11))}),
    Preset("U-Net small", "unet", {"depth": 3, "base_channels": 16}),
    Preset("U-Net (torch-em default)", "unet", {"depth": 4, "base_channels": 32}),
)


def describe_device() -> str:
    """Where training and prediction would run, in words (the same words as the CLI)."""
    from napari_msd.training.device import describe_device as describe, select_device

    return describe(select_device("auto"))


def model_summary(arch: str, config: dict[str, Any]) -> tuple[int, int]:
    """Parameter count and theoretical receptive-field radius (px), without allocating weights."""
    import torch

    from napari_msd.models import build_model

    with torch.device("meta"):
        model = build_model(arch, config)
    return sum(p.numel() for p in model.parameters()), int(model.receptive_field)


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "—"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "—"
    return str(value)


class ModelWidget(QWidget):
    """Pick a preset MS-D / U-Net or load a trained model; shows its size, receptive field and the device."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._file_meta: Any = None
        self._file_path: Path | None = None
        self.session: Session = get_session(getattr(napari_viewer, "__wrapped__", napari_viewer))

        self.preset = QComboBox()
        self.preset.addItems([p.name for p in PRESETS])
        self.in_channels, self.n_classes = QSpinBox(), QSpinBox()
        self.in_channels.setRange(1, 64)
        self.n_classes.setRange(2, 255)
        self.n_classes.setToolTip("Number of classes (labels 1..N); 0 means unlabeled")
        self.ndim = QComboBox()
        self.ndim.addItems(["2D", "3D"])
        self.params_label, self.rf_label = QLabel(), QLabel()
        self.rf_label.setToolTip("Theoretical receptive-field radius; a trained network's effective field is smaller")
        self.device_label = QLabel(describe_device())
        self.load_button = QPushButton("Load model…")
        self.file_label = QLabel(NO_FILE)
        self.file_label.setWordWrap(True)

        arch_box = QGroupBox("Network")
        form = QFormLayout(arch_box)
        form.addRow("Preset", self.preset)
        form.addRow("Input channels", self.in_channels)
        form.addRow("Classes", self.n_classes)
        form.addRow("Dimensions", self.ndim)
        form.addRow("Parameters", self.params_label)
        form.addRow("Receptive field", self.rf_label)
        form.addRow("Device", self.device_label)
        file_box = QGroupBox("Model file")
        file_layout = QVBoxLayout(file_box)
        file_layout.addWidget(self.load_button)
        file_layout.addWidget(self.file_label)
        layout = QVBoxLayout(self)
        layout.addWidget(arch_box)
        layout.addWidget(file_box)
        layout.addStretch(1)

        for signal in (self.preset.currentIndexChanged, self.in_channels.valueChanged, self.n_classes.valueChanged,
                       self.ndim.currentIndexChanged):
            signal.connect(self._on_controls_changed)
        self.load_button.clicked.connect(self._on_load_clicked)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._on_active_layer()
        self._on_controls_changed()

    # --- network from the controls -----------------------------------------------------------------------
    def from_file(self) -> bool:
        """Whether the loaded model file (the last preset entry) is selected."""
        return self.preset.currentIndex() >= len(PRESETS)

    def current_config(self) -> tuple[str, dict[str, Any]]:
        """Architecture name and full constructor arguments of the selected network."""
        if self.from_file():
            return self._file_meta.arch, dict(self._file_meta.config)
        preset = PRESETS[self.preset.currentIndex()]
        config = {"in_channels": self.in_channels.value(), "out_channels": self.n_classes.value(),
                  **preset.config, "ndim": self.ndim.currentIndex() + 2}
        return preset.arch, config

    def _on_controls_changed(self, *_: Any) -> None:
        arch, config = self.current_config()
        s = self.session
        if self.from_file():
            meta = self._file_meta
            s.class_names, s.class_colors = list(meta.class_names), list(meta.class_colors)
            s.model_path, s.metadata = self._file_path, meta
            self.file_label.setText(self._describe(self._file_path, meta))
        else:
            n = config["out_channels"]
            if len(s.class_names) != n or s.metadata is not None:
                s.class_names = [f"class {i}" for i in range(1, n + 1)]
            if len(s.class_colors) != n or s.metadata is not None:
                s.class_colors = []
            s.model_path = s.metadata = None
            self.file_label.setText(NO_FILE)
        s.arch, s.model_config = arch, config
        for control in (self.in_channels, self.n_classes, self.ndim):
            control.setEnabled(not self.from_file())
        self._show_summary(arch, config)

    def _show_summary(self, arch: str, config: dict[str, Any]) -> None:
        params, radius = model_summary(arch, config)
        self.params_label.setText(f"{params:,}")
        self.rf_label.setText(f"{radius} px radius ({2 * radius + 1} px across)")

    def _on_active_layer(self, *_: Any) -> None:
        """Default the class count (and names, colours) from the selected Labels layer."""
        layer = self.viewer.layers.selection.active
        if (self.from_file() or not isinstance(layer, Labels) or not isinstance(layer.data, np.ndarray)
                or layer.data.size == 0):
            return
        n = max(2, int(layer.data.max()))
        meta_names = layer.metadata.get("class_names") or {}
        color_dict = getattr(layer.colormap, "color_dict", {})
        colors = [color_dict.get(i) for i in range(1, n + 1)]
        self.session.class_names = [str(meta_names.get(i, f"class {i}")) for i in range(1, n + 1)]
        self.session.class_colors = [_hex(c) for c in colors] if all(c is not None for c in colors) else []
        with QSignalBlocker(self.n_classes):
            self.n_classes.setValue(n)
        self._on_controls_changed()

    # --- model file --------------------------------------------------------------------------------------
    def _on_load_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load napari-msd model", "", MODEL_FILE_FILTER)
        if path:
            self.load_model_file(path)

    def load_model_file(self, path: str | os.PathLike[str]) -> bool:
        """Read a model file's metadata and select it; on a bad file show the error and change nothing."""
        from napari_msd.io import ModelFileError, read_metadata

        try:
            meta = read_metadata(path)
            model_summary(meta.arch, meta.config)  # an unknown architecture fails here, before anything changes
        except (ModelFileError, ValueError, OSError) as err:
            show_error(str(err))
            return False
        self._file_meta, self._file_path = meta, Path(path)
        label = f"From file: {self._file_path.name}"
        with QSignalBlocker(self.preset), QSignalBlocker(self.in_channels), QSignalBlocker(self.n_classes), \
                QSignalBlocker(self.ndim):
            if self.preset.count() > len(PRESETS):
                self.preset.setItemText(len(PRESETS), label)
            else:
                self.preset.addItem(label)
            self.preset.setCurrentIndex(len(PRESETS))
            self.in_channels.setValue(int(meta.config.get("in_channels", 1)))
            self.n_classes.setValue(int(meta.config.get("out_channels", len(meta.class_names))))
            self.ndim.setCurrentIndex(int(meta.config.get("ndim", 2)) - 2)
        self._on_controls_changed()
        return True

    @staticmethod
    def _describe(path: Path, meta: Any) -> str:
        halo = "not measured" if meta.effective_halo is None else f"{meta.effective_halo} px"
        prov = meta.provenance or {}
        lines = [
            f"File: {path.name}",
            f"Architecture: {meta.arch} ({_plain(meta.config)})",
            f"Classes: {', '.join(f'{i}: {n}' for i, n in enumerate(meta.class_names, start=1))}",
            f"Receptive field: {meta.receptive_field} px; effective halo: {halo}",
            f"Normalization: {_plain(meta.normalization) if meta.normalization else 'none'}",
        ]
        if prov.get("created"):
            lines.append(f"Created: {prov['created']}")
        lines.append(f"Format version: {meta.format_version}")
        return "\n".join(lines)


def _hex(color: Any) -> str:
    rgb = np.clip(np.round(np.asarray(color, dtype=float)[:3] * 255), 0, 255).astype(int)
    return "#" + "".join(f"{v:02x}" for v in rgb)
