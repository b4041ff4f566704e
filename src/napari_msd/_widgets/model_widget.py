"""The "Model" dock: the network a new training builds (preset, input mode, classes) and the model versions."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSignalBlocker
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import workers
from .conventions import MODEL_FILE_FILTER, PACKAGE_FILE_FILTER
from .session import Session, get_session, layer_classes

if TYPE_CHECKING:
    import napari

NO_FILE = "No model yet: train one in the Train dock, or load a model file."


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
    Preset("MUNet (deep supervision)", "munet", {"depth": 4, "base_channels": 32}),
    Preset("U-Net, gated skips", "gated_unet", {"depth": 4, "base_channels": 32}),
    Preset(  # three networks trained one after another; uncertainty: where they disagree (models.ensemble)
        "Ensemble of 3 MS-D (disagreement)",
        "ensemble",
        {"members": [{"arch": "msd", "config": {"depth": 100, "width": 1, "dilations": list(range(1, 11))}}] * 3},
    ),
)


def describe_device() -> str:
    """Where training and prediction would run, in words (the same words as the CLI)."""
    from napari_msd.base.device import describe_device as describe
    from napari_msd.base.device import select_device

    return describe(select_device("auto"))


def model_summary(arch: str, config: dict[str, Any]) -> tuple[int, int]:
    """Parameter count and theoretical receptive-field radius (px) (cached: the dock asks again whenever the
    selected layer changes)."""
    return _summary(arch, json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _summary(arch: str, config_json: str) -> tuple[int, int]:
    from napari_msd.models import build_model

    # built on the CPU (well under a second even for the U-Net, once per configuration): under a
    # ``torch.device("meta")`` context, torch >= 2.14 routes the initialisers through torch._dynamo, whose
    # import loads Triton's LLVM, which crashes the process where Mesa's llvmpipe (software OpenGL) is loaded
    model = build_model(arch, json.loads(config_json))
    return sum(p.numel() for p in model.parameters()), int(model.receptive_field)


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "—"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "—"
    return str(value)


def _architecture(config: dict[str, Any]) -> str:
    """A network's configuration in words; an ensemble's members, e.g. ``3 members: msd depth=100, ...``."""
    if "members" not in config:
        return _plain(config)
    members = config.get("members") or []
    described = [
        f"{m.get('arch')} depth={(m.get('config') or {}).get('depth', '?')}" for m in members if isinstance(m, dict)
    ]
    return f"{len(members)} members: {', '.join(described)}"


INPUT_MODES = ("2D", "2.5D", "3D")


class ModelWidget(QWidget):
    """Choose the network a new training builds (preset, input mode, classes); list, switch, save and load the
    trained model versions; show parameters, receptive field and the device."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = get_session(napari_viewer)

        self.preset = QComboBox()
        self.preset.addItems([p.name for p in PRESETS])
        self.preset.setToolTip(
            "The network a new training builds: MS-D (few parameters, learns from few strokes) "
            "or U-Net (a common, larger alternative); MUNet: a U-Net trained and predicting at every scale; "
            "gated skips: a U-Net that learns which details its skip connections pass; ensemble: three MS-D "
            "trained one after another (a time limit is shared among them), whose disagreement shows where to correct"
        )
        self.n_classes = QSpinBox()
        self.n_classes.setRange(2, 255)
        self.n_classes.setToolTip("Number of classes (labels 1..N); 0 means unlabeled")
        self.input_mode = QComboBox()
        self.input_mode.addItems(INPUT_MODES)
        self.input_mode.setToolTip(
            "2D: the network sees one slice at a time. 2.5D: it sees a slice together with "
            "its neighbours above and below, and still labels one slice (the MS-D paper "
            "used 5 slices). 3D: a 3D network on 3D blocks (slower)"
        )
        self.slices = QSpinBox()
        self.slices.setRange(3, 31)
        self.slices.setSingleStep(2)
        self.slices.setValue(5)
        self.slices.setToolTip(
            "2.5D: how many neighbouring slices, the labelled one in the middle, the network sees together"
        )
        self.all_planes = QCheckBox("Also train on xz and yz planes (isotropic volumes)")
        self.all_planes.setToolTip(
            "Also learn from side views of the volume; useful only when pixels are as deep "
            "in z as they are wide in x and y"
        )
        self.params_label, self.rf_label = QLabel(), QLabel()
        self.params_label.setToolTip("Number of weights the network learns")
        self.rf_label.setToolTip(
            "Receptive field: how far around a pixel the network can look to decide its class. "
            "A trained network's effective receptive field (how far it really looks) is "
            "smaller, and is measured after training"
        )
        self.device_label = QLabel(describe_device())

        self.versions = QListWidget()
        self.versions.setToolTip("Trained model versions; the selected one predicts and is retrained")
        self.load_button = QPushButton("Load model…")
        self.save_button = QPushButton("Save version…")
        self.export_button = QPushButton("Export bioimage.io…")
        self.export_button.setToolTip(
            "Write the current version as a bioimage.io model package (.zip) that other tools run "
            "(bioimageio.core, deepImageJ, ilastik); Load model reads it back as a version"
        )
        self.export_work: workers.Work | None = None
        self.last_export: Path | None = None  # the package the last export wrote
        self.file_label = QLabel(NO_FILE)
        self.file_label.setWordWrap(True)
        self.file_label.setToolTip(
            "The current version. Effective halo: how many pixels around each block a "
            "prediction reads so that blocks join without seams; measured after training"
        )

        arch_box = QGroupBox("New network")
        form = QFormLayout(arch_box)
        form.addRow("Preset", self.preset)
        form.addRow("Classes", self.n_classes)
        form.addRow("Input", self.input_mode)
        form.addRow("Slices (2.5D)", self.slices)
        form.addRow(self.all_planes)
        form.addRow("Parameters", self.params_label)
        form.addRow("Receptive field", self.rf_label)
        form.addRow("Device", self.device_label)
        versions_box = QGroupBox("Model versions")
        vl = QVBoxLayout(versions_box)
        vl.addWidget(self.versions)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.load_button)
        vl.addLayout(buttons)
        vl.addWidget(self.file_label)
        layout = QVBoxLayout(self)
        layout.addWidget(arch_box)
        layout.addWidget(versions_box)
        layout.addStretch(1)

        for signal in (
            self.preset.currentIndexChanged,
            self.n_classes.valueChanged,
            self.input_mode.currentIndexChanged,
            self.slices.valueChanged,
            self.all_planes.toggled,
        ):
            signal.connect(self._on_controls_changed)
        self.load_button.clicked.connect(self._on_load_clicked)
        self.save_button.clicked.connect(self._on_save_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.versions.currentRowChanged.connect(self._on_version_selected)
        self.session.versions_changed.connect(self._show_versions)
        self.session.classes_changed.connect(self._on_classes_changed)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._on_active_layer()
        self._on_controls_changed()
        self._show_versions()
        workers.on_window_close(self, self._finish_export)

    # --- network from the controls -----------------------------------------------------------------------
    def input_spec(self) -> Any:
        from napari_msd.base.inputs import InputSpec

        mode = self.input_mode.currentText().lower()
        slices = self.slices.value() | 1 if mode == "2.5d" else 1
        planes = ("xy", "xz", "yz") if self.all_planes.isChecked() and mode != "3d" else ("xy",)
        return InputSpec(mode, slices, planes)

    def current_config(self) -> tuple[str, dict[str, Any]]:
        """Architecture name and full constructor arguments of a new network from the controls."""
        preset = PRESETS[self.preset.currentIndex()]
        spec = self.input_spec()
        config = {
            "in_channels": spec.in_channels,
            "out_channels": self.n_classes.value(),
            **preset.config,
            "ndim": spec.model_ndim,
        }
        return preset.arch, config

    def _on_controls_changed(self, *_: Any) -> None:
        mode = self.input_mode.currentText()
        self.slices.setEnabled(mode == "2.5D")
        self.all_planes.setEnabled(mode != "3D")
        arch, config = self.current_config()
        s = self.session
        n = config["out_channels"]
        if len(s.class_names) != n:
            names = (s.class_names + [f"class {i}" for i in range(len(s.class_names) + 1, n + 1)])[:n]
            s.set_classes(names, s.class_colors if len(s.class_colors) == n else [])
        s.arch, s.model_config, s.input_spec = arch, config, self.input_spec()
        self._show_summary(arch, config)

    def _on_classes_changed(self) -> None:
        n = len(self.session.class_names)
        if n >= 2 and n != self.n_classes.value():
            with QSignalBlocker(self.n_classes):
                self.n_classes.setValue(n)
            self._on_controls_changed()

    def _show_summary(self, arch: str, config: dict[str, Any]) -> None:
        params, radius = model_summary(arch, config)
        self.params_label.setText(f"{params:,}")
        self.rf_label.setText(f"{radius} px radius ({2 * radius + 1} px across)")

    def _on_active_layer(self, *_: Any) -> None:
        """Default the class count (and names, colours) from the selected Labels layer."""
        layer = self.viewer.layers.selection.active
        if (
            not isinstance(layer, Labels)
            or not isinstance(layer.data, np.ndarray)
            or layer.data.size == 0
            or layer.metadata.get("napari_msd_output")
            or layer.metadata.get("napari_msd_preview")
        ):
            return
        meta_names = layer.metadata.get("class_names") or {}
        n = max(2, int(layer.data.max()), *(int(k) for k in meta_names))
        self.session.set_classes(*layer_classes(layer, n))
        with QSignalBlocker(self.n_classes):
            self.n_classes.setValue(n)
        self._on_controls_changed()

    # --- versions ----------------------------------------------------------------------------------------
    def _show_versions(self) -> None:
        versions = self.session.versions
        with QSignalBlocker(self.versions):
            self.versions.clear()
            for version in versions:
                self.versions.addItem(version.describe())
            if versions.current is not None:
                self.versions.setCurrentRow(versions.names().index(versions.current.name))
        current = versions.current
        self.save_button.setEnabled(current is not None)
        self.export_button.setEnabled(current is not None and self.export_work is None)
        self.file_label.setText(NO_FILE if current is None else self._describe(current))

    def _on_version_selected(self, row: int) -> None:
        names = self.session.versions.names()
        if 0 <= row < len(names):
            version = self.session.versions.select(names[row])
            self.session.set_classes(list(version.metadata.class_names), list(version.metadata.class_colors))
            self.session.versions_changed.emit()

    def _on_save_clicked(self) -> None:
        current = self.session.versions.current
        if current is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, f"Save model {current.name}", f"{current.name}.msd", MODEL_FILE_FILTER
        )
        if path:
            self.save_version(current.name, path)

    def save_version(self, name: str, path: str | os.PathLike[str]) -> Path | None:
        """Write version ``name`` to ``path``; an existing file is replaced only after the dialog asked (Qt's
        save dialog confirms overwriting), never silently by this method's callers."""
        from napari_msd.io import ModelFileError

        try:
            written = self.session.versions.save(name, path, overwrite=Path(path).exists())
        except (ModelFileError, OSError, ValueError) as err:
            show_error(str(err))
            return None
        self.session.versions_changed.emit()
        return written

    def _on_export_clicked(self) -> None:
        current = self.session.versions.current
        if current is None or self.export_work is not None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, f"Export model {current.name} as a bioimage.io package", f"{current.name}.zip", PACKAGE_FILE_FILTER
        )
        if path:
            self.export_version(current.name, path)

    def export_version(self, name: str, path: str | os.PathLike[str]) -> workers.Work | None:
        """Write version ``name`` as a bioimage.io package to ``path`` in a worker (the viewer stays responsive),
        the test input cut from the image it was trained on, if known. An existing file is replaced only after
        the save dialog asked (a name without .zip gets it appended, and then is never replaced). Returns the
        work (``None`` while another export runs); the result is announced, an error shown as one line."""
        if self.export_work is not None:
            return None
        target = Path(path)
        overwrite = target.exists()
        if target.suffix.lower() != ".zip":
            target, overwrite = target.with_name(target.name + ".zip"), False
        version = self.session.versions.get(name)
        model, metadata = version.model, version.metadata
        image = next((data.image for data in version.trained_on), None)

        def export(work: workers.Work) -> Iterator[Path]:
            from napari_msd.io.bioimageio import export_package

            yield export_package((model, metadata), target, test_image=image, overwrite=overwrite)

        def exported(written: Path) -> None:
            self.last_export = written
            show_info(f"napari-msd: exported {name} as the bioimage.io package {written}")

        def done(work: workers.Work) -> None:
            self.export_work = None
            self.export_button.setText("Export bioimage.io…")
            self._show_versions()

        self.export_button.setEnabled(False)
        self.export_button.setText("Exporting…")
        self.export_work = workers.start(export, exported, done, "Export")
        return self.export_work

    def _finish_export(self) -> None:
        """The window closes: let a running export finish writing (seconds) rather than abandon its thread."""
        if self.export_work is not None:
            self.export_work.wait(60.0)

    def _on_load_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load napari-msd model or bioimage.io package", "", MODEL_FILE_FILTER
        )
        if path:
            self.load_model_file(path)

    def load_model_file(self, path: str | os.PathLike[str]) -> bool:
        """Add a model file as a new current version; on a bad file show the error and change nothing."""
        from napari_msd.io import ModelFileError, read_metadata

        try:
            meta = read_metadata(path)
            model_summary(meta.arch, meta.config)  # an unknown architecture fails here, before anything changes
            version = self.session.versions.load(path)
        except (ModelFileError, ValueError, OSError) as err:
            show_error(str(err))
            return False
        self.session.set_classes(list(version.metadata.class_names), list(version.metadata.class_colors))
        self.session.versions_changed.emit()
        return True

    @staticmethod
    def _describe(version: Any) -> str:
        meta = version.metadata
        halo = "not measured" if meta.effective_halo is None else f"{meta.effective_halo} px"
        prov = meta.provenance or {}
        lines = [
            f"Current: {version.name}" + (f" ({version.path.name})" if version.path else " (not saved)"),
            f"Architecture: {meta.arch} ({_architecture(meta.config)})",
            f"Input: {_plain(meta.input) if meta.input else '2d'}",
            f"Classes: {', '.join(f'{i}: {n}' for i, n in enumerate(meta.class_names, start=1))}",
            f"Receptive field: {meta.receptive_field} px; effective halo: {halo}",
            f"Normalization: {_plain(meta.normalization) if meta.normalization else 'none'}",
        ]
        if prov.get("created"):
            lines.append(f"Created: {prov['created']}")
        return "\n".join(lines)
