"""The "Batch" dock: apply a saved model to several volumes, each into a resumable zarr / OME-Zarr output.

It runs the same core as ``napari-msd predict`` (:func:`napari_msd.inference.batch.batch_events`) through
:mod:`.workers`, as the other docks do; widgets and layers are touched in main-thread slots only. Stop ends
the run between blocks and keeps every finished block: running the same job again resumes it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_msd.base.device import available_devices
from napari_msd.errors import one_line
from napari_msd.inference import batch

from . import workers
from .conventions import MODEL_FILE_FILTER
from .session import get_session

if TYPE_CHECKING:
    import napari

IMAGE_FILTER = "Images (*.tif *.tiff *.mrc *.rec *.st *.map *.ali *.mrcs *.npy);;All files (*)"
SETTINGS_MIN_HEIGHT = 180  # px of the scrolling settings always shown: model, inputs and output at least


def error_message(err: BaseException) -> str:
    """One line for a notification: napari-msd's own errors as they are, others prefixed with their type
    (``RuntimeError: CUDA out of memory...``); never a traceback."""
    if isinstance(err, batch.BatchError) and not str(err).strip():
        return "the batch job cannot run"
    return one_line(err, typed=True)


def _eta(seconds: float) -> str:
    if seconds < 60:
        return "<1 min"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60)} min"


class _Invalid(ValueError):
    """A setting to fix before a run can start."""


@dataclass
class _Run:
    """Main-thread bookkeeping of one run."""

    inputs: list[str]
    blocks: list[tuple[int, int]] = field(default_factory=list)  # (n_blocks, n_done) per input
    completed: list[str] = field(default_factory=list)
    computed: int = 0
    started: float | None = None
    current: int = 0
    error: str | None = None  # the one-line message of a failed run


class BatchWidget(QWidget):
    """Apply a model file to a list of volumes, one resumable output per volume (see the module docstring)."""

    batch_finished = Signal(list)  # emitted after every run (any outcome) with the outputs completed in it

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.session = get_session(viewer)
        self.work: workers.Work | None = None
        self.last_outputs: list[str] = []
        self._stop = threading.Event()  # Stop: the run ends between blocks, its last events still shown
        self._run: _Run | None = None
        self._closing = False

        self._auto_model = str(self.session.model_path or "")  # the session's model file, followed until edited
        self.model_edit = QLineEdit(self._auto_model)
        self.model_edit.setPlaceholderText("model file (.msd)")
        self.model_edit.setToolTip("A model file saved by napari-msd (Model dock > Save version)")
        self.model_browse = QPushButton("Browse…")
        self.inputs_list = QListWidget()
        self.inputs_list.setMinimumHeight(48)
        self.inputs_list.setMaximumHeight(80)
        self.inputs_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.inputs_list.setToolTip(
            "TIFF, zarr (vol.zarr or vol.zarr::group/array), OME-Zarr, MRC or .npy; double-click to edit"
        )
        self.add_button, self.add_zarr_button = QPushButton("Add…"), QPushButton("Add zarr…")
        self.remove_button = QPushButton("Remove")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("output folder")
        self.output_edit.setToolTip(
            "Each input is written to <input>_prediction.msd.zarr in this folder; running again "
            "resumes an unfinished output"
        )
        self.output_browse = QPushButton("Browse…")
        self.ome_zarr = QCheckBox("OME-Zarr (with a pyramid)")
        self.ome_zarr.setToolTip(
            "Write OME-Zarr (.ome.zarr) with smaller copies for fast zooming out, readable by "
            "other OME-Zarr viewers; otherwise plain zarr"
        )
        self.probabilities = QComboBox()
        self.probabilities.addItems(list(batch.PROBABILITY_KINDS))
        self.probabilities.setToolTip(
            "Also save each class's probability per pixel (uint8: 0-255, float16: "
            "0-1), besides the labels; none saves labels only"
        )
        self.tile_size = QSpinBox()
        self.tile_size.setRange(0, 1 << 16)
        self.tile_size.setSpecialValueText("auto")
        self.tile_size.setToolTip(
            "The volume is predicted block by block; this is the block side in pixels (auto fits the memory budget)"
        )
        self.halo = QSpinBox()
        self.halo.setRange(-1, 1 << 12)
        self.halo.setSpecialValueText("model's")
        self.halo.setValue(-1)
        self.halo.setToolTip(
            "Halo: the margin of surrounding pixels read around each block so that block edges "
            "match a whole-image prediction. The model's own value (its measured effective "
            "receptive field: how far it really looks) is the safe default"
        )
        self.average_orientations = QCheckBox("Average xy, xz, yz (2D model)")
        self.average_orientations.setToolTip(
            "Predict the volume's xy, xz and yz slices with a 2D model and average "
            "the three: smoother in z, for volumes with equal pixel size in x, y, z"
        )
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.device.setToolTip("Where to compute: auto picks a GPU when there is one")
        self.overwrite = QCheckBox("Overwrite existing outputs")
        self.overwrite.setToolTip(
            "Replace outputs written by other settings; otherwise a matching unfinished "
            "output is resumed and a different one is kept"
        )
        self.open_results = QCheckBox("Open results in the viewer")
        self.open_results.setChecked(True)
        self.run_button, self.stop_button = QPushButton("Run"), QPushButton("Stop")
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("Idle")
        self.status_label.setWordWrap(True)
        self._build_layout()

        self.model_browse.clicked.connect(self._browse_model)
        self.add_button.clicked.connect(self._browse_inputs)
        self.add_zarr_button.clicked.connect(self._browse_zarr)
        self.remove_button.clicked.connect(self._remove_selected)
        self.output_browse.clicked.connect(self._browse_output)
        self.run_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self._set_running(False)
        versions_changed = getattr(self.session, "versions_changed", None)
        if versions_changed is not None:
            versions_changed.connect(self._follow_session_model)
        workers.on_window_close(self, self.close_workers)

    def _build_layout(self) -> None:
        """Settings in a scroll area (options folded) above Run / Stop, progress and status, so the dock stays
        short enough to share a laptop screen with the other docks."""
        self.settings = QGroupBox("Batch prediction")
        form = QFormLayout(self.settings)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.addRow("Model", _row(self.model_edit, self.model_browse))
        form.addRow("Inputs", self.inputs_list)
        form.addRow("", _row(self.add_button, self.add_zarr_button, self.remove_button))
        form.addRow("Output", _row(self.output_edit, self.output_browse))
        form.addRow("", self.open_results)
        self.options_toggle = QToolButton()
        self.options_toggle.setText("Options")
        self.options_toggle.setCheckable(True)
        self.options_toggle.setToolTip("Output format, probabilities, tile size, halo, device")
        form.addRow(self.options_toggle)
        self.options = QWidget()
        options = QFormLayout(self.options)
        options.setContentsMargins(0, 0, 0, 0)
        options.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        options.addRow(self.ome_zarr)
        options.addRow("Probabilities", self.probabilities)
        options.addRow("Tile size", self.tile_size)
        options.addRow("Halo", self.halo)
        options.addRow(self.average_orientations)
        options.addRow("Device", self.device)
        options.addRow(self.overwrite)
        self.options.setVisible(False)
        self.options_toggle.toggled.connect(self.options.setVisible)
        form.addRow(self.options)
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.settings)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setMinimumHeight(SETTINGS_MIN_HEIGHT)
        self.scroll.setMinimumWidth(
            self.settings.minimumSizeHint().width() + self.scroll.verticalScrollBar().sizeHint().width()
        )
        layout = QVBoxLayout(self)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(_row(self.run_button, self.stop_button))
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)

    # --- settings ----------------------------------------------------------------------------------------
    def inputs(self) -> list[str]:
        return [t for t in (self.inputs_list.item(i).text().strip() for i in range(self.inputs_list.count())) if t]

    def add_inputs(self, specs: list[str | os.PathLike[str]]) -> None:
        """Append image specs (editable: ``vol.zarr`` can become ``vol.zarr::group/array``)."""
        for spec in specs:
            item = QListWidgetItem(os.fspath(spec))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            self.inputs_list.addItem(item)

    def _follow_session_model(self) -> None:
        """Show the session's current model file, unless the user chose another one here."""
        path = str(self.session.model_path or "")
        if path and self.model_edit.text().strip() in ("", self._auto_model):
            self.model_edit.setText(path)
            self._auto_model = path

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", self.model_edit.text(), MODEL_FILE_FILTER)
        if path:
            self.model_edit.setText(path)

    def _browse_inputs(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Input volumes", "", IMAGE_FILTER)
        self.add_inputs(paths)

    def _browse_zarr(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Input zarr / OME-Zarr store")
        if path:
            self.add_inputs([path])

    def _remove_selected(self) -> None:
        for item in self.inputs_list.selectedItems():
            self.inputs_list.takeItem(self.inputs_list.row(item))

    def _browse_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", self.output_edit.text())
        if path:
            self.output_edit.setText(path)

    def _settings(self) -> tuple[str, list[str], list[str], dict[str, Any]]:
        """Model, inputs, outputs and ``batch.prepare`` options, or :class:`_Invalid` saying what to fix."""
        model = os.path.expanduser(self.model_edit.text().strip())
        if not model:
            raise _Invalid("Choose a model file (saved by napari-msd) before running the batch")
        if not os.path.isfile(model):
            raise _Invalid(f"the model file {model} does not exist; choose another one")
        inputs = self.inputs()
        if not inputs:
            raise _Invalid("Add at least one input volume (TIFF, zarr, OME-Zarr, MRC or .npy) before running")
        for spec in inputs:
            if not os.path.exists(os.path.expanduser(spec.partition("::")[0])):
                raise _Invalid(f"the input {spec} does not exist; fix or remove it in the list")
        folder = os.path.expanduser(self.output_edit.text().strip())
        if not folder:
            raise _Invalid("Choose an output folder before running the batch")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise _Invalid(f"{folder} is a file; choose a folder for the outputs")
        names = [batch.output_name(spec, self.ome_zarr.isChecked()) for spec in inputs]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _Invalid(
                    f"the inputs {inputs[names.index(name)]} and {inputs[i]} would both write {name}; "
                    "remove one or run them separately"
                )
        options = {
            "probabilities": self.probabilities.currentText(),
            "tile_size": self.tile_size.value() or None,
            "halo": None if self.halo.value() < 0 else self.halo.value(),
            "overwrite": self.overwrite.isChecked(),
            "device": self.device.currentText(),
            "average_orientations": self.average_orientations.isChecked(),
        }
        return model, inputs, [os.path.join(folder, n) for n in names], options

    # --- running -----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """A run is under way: from Run until its end is handled (before ``batch_finished``, so a slot of that
        signal may start the next run)."""
        return self._run is not None

    def start(self) -> bool:
        """Run (the Run button): check the settings here, then predict in a worker; False if nothing started."""
        if self.running:
            return False
        try:
            model, inputs, outputs, options = self._settings()
        except _Invalid as err:
            show_error(str(err))
            return False
        stop = self._stop = threading.Event()
        self._closing = False
        self._run = _Run(inputs)
        self._set_running(True)
        self.progress_bar.setRange(0, 0)  # busy until the inputs are checked
        self.status_label.setText("Checking the model, inputs and outputs…")
        self.work = workers.start(
            lambda work: batch.batch_events(model, inputs, outputs, options, stop),
            self._on_event,
            self._on_done,
            "Batch",
            error_message=error_message,
        )
        self.work.on_cancel.append(stop.set)
        return True

    def stop(self) -> None:
        """Ask the running batch to end after the current block; what is written stays and resumes later."""
        self._stop.set()
        if self.running:
            self.stop_button.setEnabled(False)
            self.status_label.setText("Stopping after the current block…")

    def close_workers(self, timeout: float = 10.0) -> bool:
        """End the run without opening its results and wait up to ``timeout`` s for it (the viewer is closing);
        True when no run is left."""
        if not self.running or self.work is None:
            return True
        self._closing = True
        self.stop()
        self.work.cancel()
        self.work.wait(timeout)
        return not self.running

    def _set_running(self, running: bool) -> None:
        self.settings.setEnabled(not running)
        self.run_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def _on_event(self, item: batch.Prepared | batch.InputEvent) -> None:
        run = self._run
        if run is None:
            return
        if isinstance(item, batch.Prepared):
            run.blocks = list(item.blocks)
            self.progress_bar.setRange(0, max(1, sum(n for n, _ in run.blocks)))
            self.progress_bar.setValue(sum(d for _, d in run.blocks))
            return
        index, event = item.index, item.event
        run.current = index
        if isinstance(event, batch.BatchFinished):
            if run.blocks[index][1] >= run.blocks[index][0]:
                run.completed.append(event.output)
            return
        run.blocks[index] = (event.n_blocks, event.n_done)
        if isinstance(event, batch.BatchStarted):
            run.started = run.started or time.monotonic()
        else:
            run.computed += 1
            self.progress_bar.setValue(sum(d for _, d in run.blocks))
        remaining = sum(n - d for n, d in run.blocks)
        eta = "estimating"
        if run.computed and run.started is not None:
            eta = _eta(remaining * (time.monotonic() - run.started) / run.computed)
        self.status_label.setText(
            f"input {index + 1}/{len(run.blocks)}: block {event.n_done}/{event.n_blocks}, ETA {eta}"
        )

    def _on_done(self, work: workers.Work) -> None:
        """The run ended (done, stopped or failed; its error was shown by :mod:`.workers`): say so, open results."""
        run, self._run = self._run, None
        self._set_running(False)
        if run is None:
            return
        if work.error is not None:
            run.error = error_message(work.error)
        complete = len(run.completed) == len(run.inputs)
        done = sum(d for _, d in run.blocks)
        if run.error is not None:
            status = f"Failed: {run.error}. Finished blocks are kept; run again to resume."
        elif not complete:
            status = (
                f"Stopped at input {run.current + 1}/{len(run.inputs)} ({done} blocks done); run again with "
                "the same settings to resume."
            )
        else:
            status = f"Done: {len(run.completed)} output(s), {run.computed} blocks computed."
        self.status_label.setText(status)
        self.progress_bar.setRange(0, max(1, sum(n for n, _ in run.blocks)))
        self.progress_bar.setValue(done)
        self.last_outputs = list(run.completed)
        if complete and run.error is None and self.open_results.isChecked() and not self._closing:
            for path in run.completed:
                self._open(path)
        self.batch_finished.emit(list(self.last_outputs))

    def _open(self, path: str) -> None:
        """Open an output lazily with the napari-msd reader, its layers named after the output."""
        base = Path(path).name.removesuffix(".zarr").removesuffix(".ome").removesuffix(".msd")
        try:
            layers = self.viewer.open(path, plugin="napari-msd")
        except Exception as err:  # noqa: BLE001 -- one notification, the output itself is fine
            show_error(f"could not open {path}: {error_message(err)}")
            return
        for layer in layers:
            layer.name = base if layer.name == "prediction" else f"{base} {layer.name}"

    # --- shutdown ----------------------------------------------------------------------------------------
    def closeEvent(self, event: Any) -> None:  # noqa: N802 -- Qt API
        self.close_workers()
        super().closeEvent(event)


def _row(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return row
