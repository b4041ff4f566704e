"""Objects dock: instances of a semantic prediction, measured, shown as a labels layer with its table and exported.

The dock runs the core generator :func:`napari_msd.objects.iter_objects` (what ``napari-msd measure`` runs) in a
worker: connected components per class, block by block, optionally split by a watershed, and one row of
measurements per object. The objects become a labels layer whose ``features`` are the table (napari shows an
object's row under the cursor); the dock lists the objects (click one to go to it), draws a histogram of a chosen
column and writes the table as CSV.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_msd.errors import one_line

from . import workers
from .conventions import is_preview
from .histogram import Histogram
from .session import Session, get_session
from .viewport import go_to

if TYPE_CHECKING:
    import napari

    from napari_msd.objects import ObjectsResult, ObjectTable, Progress, Scale

OBJECTS_OUTPUT = "objects"  # metadata["napari_msd_output"] of the layers this dock makes
TABLE_ROWS = 2000  # objects listed in the dock (largest first); the CSV and the layer's features hold all
SIZE_COLUMNS = ("volume_px", "area_px")


@dataclasses.dataclass
class FindJob:
    """What one "Find objects" run works on: the chosen layer, its data, the options, and where it writes."""

    source: Any
    labels: Any
    classes: list[int]
    class_names: dict[int, str]
    split: bool
    h: float
    min_size: int
    image: Any
    scale: Scale | None


@dataclasses.dataclass(frozen=True)
class Found:
    """Worker event: the objects and their table."""

    result: ObjectsResult


def layer_scale(layer: Any) -> Scale | None:
    """The pixel size of ``layer`` as a :class:`~napari_msd.objects.Scale`, or None where it is in pixels."""
    from napari_msd.objects import Scale

    sizes = tuple(float(s) for s in layer.scale)
    units = [str(u) for u in getattr(layer, "units", ()) or ()]
    unit = units[0] if units and len(set(units)) == 1 and units[0] != "pixel" else ""
    if not unit and all(s == 1 for s in sizes):
        return None
    return Scale(sizes, unit)


def semantic_classes(layer: Any) -> dict[int, str]:
    """Class ids and names of a semantic labels layer: from ``metadata["class_names"]`` (predictions and stroke
    layers carry it), else the values present in an in-memory array."""
    named = layer.metadata.get("class_names") or {}
    if named:
        return {int(k): str(v) for k, v in named.items()}
    data = layer.data
    if isinstance(data, np.ndarray):
        return {int(v): f"class {int(v)}" for v in np.unique(data) if v != 0}
    raise ValueError(
        f"'{layer.name}' names no classes and is not in memory; use a prediction of the Predict dock, or "
        "napari-msd measure on the command line"
    )


class ObjectsWidget(QWidget):
    """Find, measure, list and export the objects of a semantic prediction."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        from .layer_combo import LayerCombo

        self.viewer = napari_viewer
        self.session: Session = get_session(napari_viewer)
        self.work: workers.Work | None = None
        self._job: FindJob | None = None
        self.layer: Any = None  # the objects layer of the last run
        self.table: ObjectTable | None = None

        self.source = LayerCombo(napari_viewer, Labels, self, skip=self._not_semantic)
        self.source.setToolTip("A semantic labels layer: a prediction, or any layer with one value per class")
        self.source.currentIndexChanged.connect(self._list_classes)
        self.classes = QListWidget()
        self.classes.setMaximumHeight(90)
        self.classes.setToolTip("The classes whose objects are found (each object keeps its class)")
        self.split = QCheckBox("Split touching objects")
        self.split.setToolTip(
            "A watershed on the distance to each object's border splits objects joined by a neck "
            "(one seed per bump higher than the depth below)"
        )
        self.h = QDoubleSpinBox()
        self.h.setRange(0.5, 50.0)
        self.h.setValue(2.0)
        self.h.setSuffix(" px")
        self.h.setToolTip("How much deeper than a neck a part's centre must be to become an object of its own")
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10**9)
        self.min_size.setValue(10)
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip("Objects smaller than this (in the whole volume) are dropped")
        self.use_image = QCheckBox("Intensity from")
        self.image = LayerCombo(napari_viewer, Image, self)
        self.use_image.setChecked(True)
        self.find_button = QPushButton("Find objects")
        self.find_button.clicked.connect(self.find_or_stop)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.status = QLabel("Choose a prediction and press Find objects.")
        self.status.setWordWrap(True)

        self.list = QTableWidget(0, 0)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.list.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.list.setSortingEnabled(True)
        self.list.cellClicked.connect(self._go_to_row)
        self.list.setToolTip("Click an object to show it")
        self.column = QComboBox()
        self.column.currentTextChanged.connect(self._draw_histogram)
        self.histogram = Histogram()
        self.export_button = QPushButton("Export CSV…")
        self.export_button.clicked.connect(self.export_dialog)
        self.export_button.setEnabled(False)

        form = QFormLayout()
        form.addRow("Prediction", self.source)
        form.addRow("Classes", self.classes)
        split_row = QHBoxLayout()
        split_row.addWidget(self.split)
        split_row.addWidget(self.h)
        form.addRow(split_row)
        form.addRow("Smallest object", self.min_size)
        image_row = QHBoxLayout()
        image_row.addWidget(self.use_image)
        image_row.addWidget(self.image)
        form.addRow(image_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.find_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.list, stretch=1)
        column_row = QHBoxLayout()
        column_row.addWidget(QLabel("Histogram of"))
        column_row.addWidget(self.column, stretch=1)
        layout.addLayout(column_row)
        layout.addWidget(self.histogram)
        layout.addWidget(self.export_button)
        self._list_classes()
        workers.on_window_close(self, self.close_workers)

    # -- choices -------------------------------------------------------------------------------
    @staticmethod
    def _not_semantic(layer: Any) -> bool:
        return is_preview(layer) or layer.metadata.get("napari_msd_output") in (OBJECTS_OUTPUT, "uncertainty")

    def _list_classes(self, *_: Any) -> None:
        self.classes.clear()
        layer = self.source.layer()
        if layer is None:
            return
        try:
            named = semantic_classes(layer)
        except ValueError as err:
            self.status.setText(str(err))
            return
        for value, name in sorted(named.items()):
            item = QListWidgetItem(name)
            item.setData(Qt.ItemDataRole.UserRole, value)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.classes.addItem(item)

    def checked_classes(self) -> list[int]:
        return [
            int(self.classes.item(i).data(Qt.ItemDataRole.UserRole))
            for i in range(self.classes.count())
            if self.classes.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_classes(self, names: list[str]) -> None:
        """Check only the classes named ``names`` (scripts and tests)."""
        for i in range(self.classes.count()):
            item = self.classes.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    # -- finding -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.work is not None and not self.work.finished

    def find_or_stop(self) -> None:
        if self.running:
            self.stop()
        else:
            self.find()

    def find(self) -> bool:
        """Start finding objects; False (with a message) when the choices cannot work."""
        layer = self.source.layer()
        if layer is None:
            show_error("Choose a semantic labels layer (a prediction) to find objects in.")
            return False
        try:
            named = semantic_classes(layer)
        except ValueError as err:
            show_error(str(err))
            return False
        classes = self.checked_classes()
        if not classes:
            show_error("Check at least one class to find objects of.")
            return False
        image = self.image.layer() if self.use_image.isChecked() else None
        if image is not None and tuple(image.data.shape) != tuple(layer.data.shape):
            show_error(
                f"'{image.name}' has shape {tuple(image.data.shape)}, '{layer.name}' {tuple(layer.data.shape)}: "
                "choose the image the prediction was made from, or uncheck Intensity from"
            )
            return False
        try:
            scale = layer_scale(layer)
        except ValueError as err:
            show_error(f"'{layer.name}' has a scale napari-msd cannot use ({one_line(err)}); measuring in pixels")
            scale = None
        self._job = FindJob(
            layer,
            layer.data,
            classes,
            named,
            self.split.isChecked(),
            self.h.value(),
            self.min_size.value(),
            None if image is None else image.data,
            scale,
        )
        what = ", ".join(named.get(c, str(c)) for c in classes)
        self.status.setText(f"Finding objects of {what} in '{layer.name}'…")
        self.find_button.setText("Stop")
        self.progress_bar.setVisible(True)
        self.progress_bar.setRange(0, 0)
        self.work = workers.start(self._find_events, self._on_event, self._on_done, "Finding objects")
        return True

    def _find_events(self, work: workers.Work):
        """Worker thread: the core pipeline, its progress events, then the result."""
        from napari_msd.objects import iter_objects

        job = self._job
        assert job is not None

        def scratch(shape: tuple[int, ...], dtype: Any) -> Any:
            return self.session.scratch(shape, dtype, like=job.labels)

        result = yield from iter_objects(
            job.labels,
            classes=job.classes,
            class_names=job.class_names,
            split=job.split,
            h=job.h,
            min_size=job.min_size,
            image=job.image,
            scale=job.scale,
            out=scratch,
            scratch=scratch,
        )
        yield Found(result)

    def _on_event(self, event: Progress | Found) -> None:
        if isinstance(event, Found):
            self._show(event.result)
            return
        self.progress_bar.setRange(0, max(event.total, 1))
        self.progress_bar.setValue(event.done)
        self.status.setText(event.text)

    def _on_done(self, work: workers.Work) -> None:
        self.find_button.setText("Find objects")
        self.progress_bar.setVisible(False)
        if work.cancelled.is_set() and self.table is None:
            self.status.setText("Stopped; nothing was kept.")
        elif work.error is not None:
            self.status.setText(f"Failed: {one_line(work.error)}")

    def stop(self) -> None:
        if self.work is not None:
            self.work.cancel()
            self.status.setText("Stopping…")

    def close_workers(self, timeout: float = 10.0) -> None:
        if self.work is not None:
            self.work.cancel()
            self.work.wait(timeout)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 -- Qt API
        self.close_workers()
        super().closeEvent(event)

    # -- results -------------------------------------------------------------------------------
    def _show(self, result: ObjectsResult) -> None:
        job = self._job
        assert job is not None
        table = result.table
        self.table = table
        features = {"index": np.asarray(table.columns["label"]), **{n: v for n, v in table.columns.items()}}
        name = f"{job.source.name} objects"
        if self.layer is not None and self.layer in self.viewer.layers and self.layer.name == name:
            self.layer.data = result.instances  # a new run replaces the dock's own layer of that source
            self.layer.features = features
        else:
            self.layer = self.viewer.add_labels(
                result.instances,
                name=name,
                scale=job.source.scale,
                translate=job.source.translate,
                features=features,
                metadata={"napari_msd_output": OBJECTS_OUTPUT, "source": job.source.name},
            )
        self._fill_list(table)
        self.column.blockSignals(True)
        self.column.clear()
        numeric = [n for n, v in table.columns.items() if v.dtype.kind in "fiu" and n not in ("label", "class_id")]
        self.column.addItems(numeric)
        size = next((c for c in SIZE_COLUMNS if c in numeric), numeric[0] if numeric else "")
        self.column.setCurrentText(size)
        self.column.blockSignals(False)
        self._draw_histogram(size)
        self.export_button.setEnabled(len(table) > 0)
        counts = {}
        for value in table.columns["class"].tolist():
            counts[value] = counts.get(value, 0) + 1
        summary = ", ".join(f"{n} {name}" for name, n in counts.items()) or "no objects"
        self.status.setText(f"{len(table):,} objects: {summary}.")

    def _fill_list(self, table: ObjectTable) -> None:
        shown = [c for c in ("label", "class", *SIZE_COLUMNS, "mean_intensity") if c in table.columns]
        order = np.arange(len(table))
        size = next((c for c in SIZE_COLUMNS if c in table.columns), None)
        if size is not None:
            order = np.argsort(-np.asarray(table.columns[size]), kind="stable")
        order = order[:TABLE_ROWS]
        self.list.setSortingEnabled(False)
        self.list.clear()
        self.list.setColumnCount(len(shown))
        self.list.setHorizontalHeaderLabels(shown)
        self.list.setRowCount(len(order))
        for r, i in enumerate(order):
            for c, column in enumerate(shown):
                value = table.columns[column][i]
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, value.item() if hasattr(value, "item") else value)
                item.setData(Qt.ItemDataRole.UserRole, int(i))
                self.list.setItem(r, c, item)
        self.list.setSortingEnabled(True)
        if len(table) > TABLE_ROWS:
            self.list.setToolTip(f"The {TABLE_ROWS:,} largest of {len(table):,} objects; Export CSV holds all")

    def _draw_histogram(self, column: str) -> None:
        if self.table is None or column not in self.table.columns:
            return
        unit = self.table.units.get(column, "")
        self.histogram.set_values(np.asarray(self.table.columns[column]), f"{column}" + (f" ({unit})" if unit else ""))

    def _go_to_row(self, row: int, _column: int = 0) -> None:
        item = self.list.item(row, 0)
        if item is None or self.table is None or self.layer is None:
            return
        i = int(item.data(Qt.ItemDataRole.UserRole))
        self.go_to_object(i)

    def go_to_object(self, i: int) -> None:
        """Show object ``i`` (a row of the table): its plane, centred and zoomed; it becomes the selected label."""
        assert self.table is not None and self.layer is not None
        axes = ("z", "y", "x")[-self.layer.ndim :]
        region = tuple(
            slice(int(self.table.columns[f"bbox_{a}_start"][i]), int(self.table.columns[f"bbox_{a}_stop"][i]))
            for a in axes
        )
        if len(region) == 3:  # the plane through the object's centroid
            z = int(round(float(self.table.columns["centroid_z_px"][i])))
            region = (slice(z, z + 1), *region[1:])
        go_to(self.viewer, self.layer, region)
        self.layer.selected_label = int(self.table.columns["label"][i])

    def export_dialog(self) -> None:
        if self.table is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export the objects table", "objects.csv", "CSV (*.csv)")
        if path:
            self.export(path, overwrite=True)  # the dialog asked before replacing a file

    def export(self, path: str, overwrite: bool = False) -> bool:
        """Write the table of the last run as CSV; False (with a message) when it cannot."""
        from napari_msd.objects import write_csv

        if self.table is None:
            show_error("Find objects first: there is no table to export.")
            return False
        try:
            written = write_csv(self.table, path, overwrite=overwrite)
        except ValueError as err:
            show_error(one_line(err))
            return False
        show_info(f"Wrote {len(self.table):,} objects to {written}")
        return True
