"""The "Predict" dock: predict a whole layer with the current model version, streaming blocks into layers
(the view first), then review: go to the most uncertain regions, fix the prediction with napari's own
paint / erase / fill tools, and turn the fixes into training labels ("Use corrections") for retraining.

Prediction runs the core :class:`~napari_msd.inference.predictor.Predictor` in a thread worker that writes each
block into the output arrays (numpy, or zarr scratch stores for dask/zarr images, so nothing is loaded whole);
the main thread only refreshes the layers, at most a few times a second.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_msd.base.device import available_devices
from napari_msd.base.labels import labels_dtype

from . import workers
from .conventions import class_colormap, is_preview
from .layer_checks import LayerError, check_model_input, image_array
from .layer_combo import LayerCombo
from .session import PredictionRecord, Session, get_session

if TYPE_CHECKING:
    import napari

REFRESH_INTERVAL = 0.3  # s between layer refreshes while blocks stream in
REVIEW_TILE = 128  # px: size of the regions "Next uncertain region" visits
NEXT_TIP = "Go to the most uncertain region not yet reviewed: where a correction helps most"
CORRECTIONS_TIP = (
    "Copy the pixels you repainted in the prediction into the training labels (undo there with "
    "Ctrl+Z); then Retrain in the Train dock"
)
NO_PREDICTION_TIP = "Predict first: this needs a prediction layer made by the Predict button"
NO_UNCERTAINTY_TIP = "Predict with 'Uncertainty layer' checked first: this needs the uncertainty of a prediction"
DISAGREEMENT = "disagreement"  # an ensemble's measure: where its members disagree (inference.uncertainty)


@dataclasses.dataclass
class PredictRun:
    """One Predict press: the layers it fills, their arrays, and its progress."""

    layer: Any  # the prediction's labels layer
    unc_layer: Any  # the uncertainty image layer, or None
    prob_layers: list[Any]
    scores: Any  # RegionScores for "Next uncertain region", or None
    image: Any
    first: tuple[slice, ...]  # the region on screen, predicted first
    model: Any
    meta: Any
    device: str
    labels_out: Any
    predicted_out: Any  # the prediction as predicted, kept to find the user's corrections
    unc_out: Any
    prob_outs: list[Any]
    measure: str  # "entropy", "margin" or (an ensemble) "disagreement"
    n_blocks: int = 0
    done: int = 0
    precision: str = ""  # MS-D's arithmetic, in words (models.precision); empty for other networks
    started: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class Planned:
    """Worker event: the prediction has ``n_blocks`` blocks, computed in ``precision`` (words; empty: not MS-D)."""

    n_blocks: int
    precision: str = ""


@dataclasses.dataclass
class BlockDone:
    """Worker event: one block is written; its uint8 uncertainty when asked for (for the review scores)."""

    region: tuple[slice, ...]
    uncertainty: np.ndarray | None


class PredictWidget(QWidget):
    """Predict with the current version; uncertainty and review; corrections into the training labels."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = get_session(napari_viewer)
        self.work: workers.Work | None = None
        self._run: PredictRun | None = None
        self._last_refresh = 0.0
        self._shown_first = False
        self._dirty = False

        self.image_combo = LayerCombo(napari_viewer, Image, skip=self._is_output)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.uncertainty_check = QCheckBox("Uncertainty layer")
        self.uncertainty_check.setChecked(True)
        self.uncertainty_check.setToolTip(
            "Also make a layer that is bright where the network hesitates between "
            "classes: the places worth checking and correcting first"
        )
        self.measure = QComboBox()
        self.measure.addItems(["entropy", "margin"])
        self.measure.setToolTip(
            "How hesitation is measured: entropy looks at all classes' probabilities, margin "
            "at how close the two most likely classes are; disagreement (ensembles) at where the "
            "ensemble's networks contradict each other"
        )
        self.probabilities_check = QCheckBox("Probability layers")
        self.probabilities_check.setToolTip(
            "Also make one layer per class with the network's confidence (0-255) that a pixel belongs to it"
        )
        self.predict_button = QPushButton("Predict")
        self.predict_button.setToolTip(
            "Predict the whole image with the current model version, the part on screen first, block by block"
        )
        self.stop_button = QPushButton("Stop")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        # the dock's own bar, not napari's activity dock: its animated busy indicator repaints the whole window
        # several times a second, which cost a third of the prediction speed with software OpenGL
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.next_button = QPushButton("Next uncertain region")
        self.corrections_button = QPushButton("Use corrections")
        self.review_status = QLabel("")
        self.review_status.setWordWrap(True)

        box = QGroupBox("Predict")
        form = QFormLayout(box)
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_label)
        form.addRow("Device", self.device)
        unc = QHBoxLayout()
        unc.addWidget(self.uncertainty_check)
        unc.addWidget(self.measure)
        form.addRow(unc)
        form.addRow(self.probabilities_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.stop_button)
        form.addRow(buttons)
        form.addRow(self.progress_bar)
        form.addRow(self.status)
        review = QGroupBox("Review and correct")
        rl = QVBoxLayout(review)
        rl.addWidget(QLabel("Fix the prediction layer with the paint, erase and fill tools, then:"))
        rl.addWidget(self.corrections_button)
        rl.addWidget(self.next_button)
        rl.addWidget(self.review_status)
        layout = QVBoxLayout(self)
        layout.addWidget(box)
        layout.addWidget(review)
        layout.addStretch(1)

        self.predict_button.clicked.connect(self.predict)
        self.stop_button.clicked.connect(self.stop)
        self.next_button.clicked.connect(self.next_uncertain_region)
        self.corrections_button.clicked.connect(self.use_corrections)
        self.session.versions_changed.connect(self._show_model)
        self.viewer.layers.events.inserted.connect(self._update_review)
        self.viewer.layers.events.removed.connect(self._update_review)
        workers.on_window_close(self, self.close_workers)
        self._show_model()
        self._set_running(False)
        self._update_review()

    def _update_review(self, *_: Any) -> None:
        """Enable the review buttons only while a prediction (with uncertainty, for 'Next') is in the viewer."""
        records = [self.session.predictions[layer] for layer in self.viewer.layers if layer in self.session.predictions]
        scored = any(r.scores is not None for r in records)
        self.corrections_button.setEnabled(bool(records))
        self.corrections_button.setToolTip(CORRECTIONS_TIP if records else NO_PREDICTION_TIP)
        self.next_button.setEnabled(scored)
        self.next_button.setToolTip(NEXT_TIP if scored else NO_PREDICTION_TIP if not records else NO_UNCERTAINTY_TIP)

    def _is_output(self, layer: Any) -> bool:
        return bool(layer.metadata.get("napari_msd_output")) or is_preview(layer)

    def _show_model(self, *_: Any) -> None:
        current = self.session.versions.current
        self.model_label.setText(
            current.describe()
            if current is not None
            else "none yet: train one (Train dock) or load a model file (Model dock)"
        )
        self.predict_button.setEnabled(current is not None and not self.running)
        self._offer_disagreement(current is not None and current.metadata.arch == "ensemble")

    def _offer_disagreement(self, ensemble: bool) -> None:
        """An ensemble's uncertainty is its members' disagreement (chosen when it becomes current); other networks
        have none."""
        index = self.measure.findText(DISAGREEMENT)
        if ensemble and index < 0:
            self.measure.addItem(DISAGREEMENT)
            self.measure.setCurrentText(DISAGREEMENT)
        elif not ensemble and index >= 0:
            self.measure.removeItem(index)

    @property
    def running(self) -> bool:
        return self.work is not None and self.work.running

    def _set_running(self, running: bool) -> None:
        self.predict_button.setEnabled(not running and self.session.versions.current is not None)
        self.stop_button.setEnabled(running)

    # -- prediction -----------------------------------------------------------------------------
    def predict(self) -> bool:
        """Predict the chosen image with the current version, the view first; outputs become new layers."""
        from .viewport import visible_region

        version = self.session.versions.current
        if self.running:
            show_error("a prediction is already running; stop it first")
            return False
        try:
            if version is None:
                raise LayerError("no model yet: train one in the Train dock or load a model file in the Model dock")
            source = self.image_combo.layer()
            image = image_array(source)
            check_model_input(version.metadata.input, image, source.name)
        except LayerError as err:
            show_error(str(err))
            return False
        meta, shape = version.metadata, tuple(image.shape)
        n = len(meta.class_names)
        s = self.session
        labels = s.scratch(shape, labels_dtype(n), like=image)
        predicted = s.scratch(shape, labels.dtype, like=image)
        placement = {"scale": source.scale, "translate": source.translate}
        names = {i + 1: name for i, name in enumerate(meta.class_names)}
        layer = self.viewer.add_labels(
            labels,
            name=f"prediction ({version.name})",
            colormap=class_colormap(list(meta.class_colors)),
            metadata={"napari_msd_output": "prediction", "class_names": names, "version": version.name},
            **placement,
        )
        layer.features = {"class": ["unlabeled", *meta.class_names]}
        scores = None
        unc_layer = None
        if self.uncertainty_check.isChecked():
            from napari_msd.inference.uncertainty import RegionScores

            scores = RegionScores(shape, tile=REVIEW_TILE)
            unc = s.scratch(shape, np.uint8, like=image)
            unc_layer = self.viewer.add_image(
                unc,
                name=f"uncertainty ({version.name})",
                colormap="magma",
                contrast_limits=(0, 255),
                opacity=0.5,
                blending="additive",
                visible=False,
                metadata={"napari_msd_output": "uncertainty", "measure": self.measure.currentText()},
                **placement,
            )
        prob_layers = []
        if self.probabilities_check.isChecked():
            for k, (name, color) in enumerate(zip(meta.class_names, meta.class_colors)):
                p = s.scratch(shape, np.uint8, like=image)
                prob_layers.append(
                    self.viewer.add_image(
                        p,
                        name=f"p({name}) ({version.name})",
                        colormap=color if color != "#000000" else "gray",
                        contrast_limits=(0, 255),
                        blending="additive",
                        visible=False,
                        metadata={"napari_msd_output": "probability", "class_index": k + 1},
                        **placement,
                    )
                )
        # keyed by the layer itself: a plugin's viewer hands out short-lived proxies, and a weak key dies with them
        s.predictions[getattr(layer, "__wrapped__", layer)] = PredictionRecord(
            predicted, source.name, version.name, scores
        )
        self._update_review()
        self.viewer.layers.selection.active = layer
        self._run = PredictRun(
            layer=layer,
            unc_layer=unc_layer,
            prob_layers=prob_layers,
            scores=scores,
            image=image,
            first=visible_region(self.viewer, source, shape),
            model=version.model,
            meta=meta,
            device=self.device.currentText(),
            labels_out=labels,
            predicted_out=predicted,
            unc_out=unc_layer.data if unc_layer is not None else None,
            prob_outs=[p.data for p in prob_layers],
            measure=self.measure.currentText(),
        )
        self._shown_first = False
        self.status.setText(f"Predicting '{source.name}' with {version.name}…")
        self._set_running(True)
        self.work = workers.start(self._predict_events, self._on_block, self._on_done, "Prediction")
        return True

    def _predict_events(self, work: workers.Work):
        """Worker thread: predict block by block, the view first, writing into the output arrays."""
        from napari_msd.inference.predictor import Predictor
        from napari_msd.inference.sinks import BlockSink, UncertaintyInto, class_probabilities_into, labels_into, stream
        from napari_msd.models.precision import precision_name

        run = self._run
        assert run is not None
        model = run.model if run.device == "cpu" else copy.deepcopy(run.model)  # the version stays on the CPU
        predictor = Predictor(model, run.meta, device=run.device)
        plan = predictor.plan(run.image.shape)
        msd = run.meta.arch == "msd"  # the probe, if any, runs here, off the main thread
        yield Planned(len(plan), precision_name(predictor.device) if msd else "")
        review = None if run.unc_out is None else UncertaintyInto(run.unc_out, run.measure)
        sinks: list[BlockSink] = [labels_into(run.labels_out), labels_into(run.predicted_out)]
        sinks += [review] if review is not None else []
        sinks += [class_probabilities_into(run.prob_outs)] if run.prob_outs else []
        members = run.measure == DISAGREEMENT  # computed from the members' probabilities, in the same pass
        want_probs = (review is not None and not members) or bool(run.prob_outs)
        for done in stream(
            predictor,
            run.image,
            sinks,
            first=run.first,
            stop=work.cancelled,
            probabilities=want_probs,
            **({"disagreement": True} if members else {}),
        ):
            yield BlockDone(done.block.out, None if review is None else review.latest)

    def _on_block(self, event: Planned | BlockDone) -> None:
        run = self._run
        if run is None:
            return
        if isinstance(event, Planned):
            run.n_blocks, run.precision = event.n_blocks, event.precision
            self.progress_bar.setRange(0, event.n_blocks)
            self.progress_bar.setValue(0)
            self.progress_bar.setVisible(True)
            return
        region, u = event.region, event.uncertainty
        run.done += 1
        if run.scores is not None and u is not None:
            run.scores.add(region, u)
        elapsed = time.perf_counter() - run.started
        left = elapsed / run.done * (run.n_blocks - run.done)
        self.status.setText(f"block {run.done}/{run.n_blocks} · {elapsed:.0f} s · about {left:.0f} s left")
        if self._on_screen(region):  # only blocks on the plane shown change the picture (repaints cost CPU too)
            self._dirty = True
            if time.perf_counter() - self._last_refresh >= REFRESH_INTERVAL or not self._shown_first:
                self._shown_first = True
                self._refresh()
        self.progress_bar.setValue(run.done)

    def _on_screen(self, region: Any) -> bool:
        from .viewport import current_plane

        layer = self._run.layer if self._run is not None else None
        if layer is None or len(region) < 3 or self.viewer.dims.ndisplay == 3:
            return True
        z = current_plane(self.viewer, layer)
        return z is None or region[0].start <= z < region[0].stop

    def _refresh(self) -> None:
        self._last_refresh = time.perf_counter()
        self._dirty = False
        run = self._run
        for layer in (run.layer, run.unc_layer, *run.prob_layers) if run is not None else ():
            if layer is not None and layer in self.viewer.layers:
                layer.refresh()

    def _on_done(self, work: workers.Work) -> None:
        run = self._run
        self.progress_bar.setVisible(False)
        if run is not None:
            if self._dirty:  # other planes are read when the user moves to them
                self._refresh()
            complete = run.done == run.n_blocks and run.n_blocks > 0
            what = "done" if complete else f"stopped after {run.done} of {run.n_blocks} blocks"
            precision = f" ({run.precision})" if run.precision else ""
            self.status.setText(f"Prediction {what} in {time.perf_counter() - run.started:.1f} s{precision}")
        self._set_running(False)

    def stop(self) -> None:
        if self.work is not None:
            self.work.cancel()

    def close_workers(self, timeout: float = 10.0) -> None:
        if self.work is not None and self.work.running:
            self.work.cancel()
            self.work.wait(timeout)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 -- Qt API
        self.close_workers()
        super().closeEvent(event)

    # -- review ---------------------------------------------------------------------------------
    def prediction_layer(self) -> Any:
        """The selected prediction layer, else the latest one, else None."""
        active = self.viewer.layers.selection.active
        if active is not None and active in self.session.predictions:
            return active
        ours = [layer for layer in self.viewer.layers if layer in self.session.predictions]
        return ours[-1] if ours else None

    def next_uncertain_region(self) -> Any:
        """Take the view to the most uncertain region not yet reviewed; returns it (None when all are)."""
        from .viewport import go_to

        layer = self.prediction_layer()
        record = self.session.predictions.get(layer) if layer is not None else None
        if record is None or record.scores is None:
            show_error("predict with 'Uncertainty layer' checked first")
            return None
        region = record.scores.next_region()
        if region is None:
            show_info("every predicted region has been reviewed")
            return None
        go_to(self.viewer, layer, region)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.review_status.setText(f"{100 * record.scores.reviewed_fraction:.0f}% of the regions reviewed")
        return region

    def use_corrections(self) -> int:
        """Copy the pixels repainted in the prediction into the training labels; returns how many."""
        from napari_msd.training.corrections import corrections

        layer = self.prediction_layer()
        if layer is None:
            show_error("no prediction to take corrections from: predict first, then repaint what is wrong")
            return 0
        record = self.session.predictions[layer]
        pair = self.session.training_layers
        if pair is None or pair[1] not in self.viewer.layers:
            show_error("choose the training labels layer in the Train dock first")
            return 0
        image_name, labels_name = pair
        target = self.viewer.layers[labels_name]
        if record.image_name != image_name or tuple(target.data.shape) != tuple(layer.data.shape):
            show_error(
                f"this prediction is of '{record.image_name}' but the Train dock trains on '{image_name}'; "
                "choose that image there"
            )
            return 0
        indices, values = corrections(layer.data, record.predicted)
        if values.size == 0:
            show_info("no corrections yet: paint the right class over what the prediction got wrong")
            return 0
        if isinstance(target.data, np.ndarray):
            target.data_setitem(indices, values)  # one undo step in the labels layer
        else:  # on-disk labels have no undo: fill only unlabeled pixels, never repaint the user's strokes
            keep = (
                np.asarray(target.data.vindex[indices] if hasattr(target.data, "vindex") else target.data[indices]) == 0
            )
            indices, values = tuple(i[keep] for i in indices), values[keep]
            target.data.vindex[indices] = values
            target.refresh()
        self.review_status.setText(
            f"{values.size:,} corrected pixels added to '{labels_name}'; retrain in the Train dock"
        )
        return int(values.size)
