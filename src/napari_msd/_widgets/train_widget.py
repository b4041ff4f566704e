"""The "Train" dock: train a new network on painted strokes, or retrain the current version with new labels,
watching the loss, validation metrics and a live preview of the view while it learns.

The core :class:`~napari_msd.training.engine.Trainer` runs in a thread worker; this dock renders its events. An
ensemble (the Model dock's ensemble preset, or retraining an ensemble version) trains its members one after another
(:class:`~napari_msd.training.ensemble.EnsembleTrainer`): the status names the member in training, Stop ends the
whole run (the member in training keeps its best weights), "Skip member" leaves that member out and starts the next.
The live preview predicts the region on screen with a snapshot of the current weights on the training thread,
between two steps (a forward pass in a thread of its own would compete with the training's compute threads),
never more than one at a time and at most :data:`PREVIEW_SHARE` of the training's time; the interface never
waits for it. Each finished training
becomes a model version (``v1``, ``v2``, ...) in the session, with snapshots of the labels it learned from.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_msd.base.labels import labels_dtype
from napari_msd.io.model_file import default_class_colors

from . import workers
from .conventions import PREVIEW_LAYER, class_colormap, is_preview
from .layer_checks import LayerError, check_model_input, image_array, labels_array
from .layer_combo import LayerCombo
from .plot import TrainingPlot
from .pretraining import BackgroundPretraining
from .session import Session, get_session, layer_classes

if TYPE_CHECKING:
    import napari

PRETRAIN_DELAY_MS = 1500  # after an image is chosen: a person flipping through layers starts nothing
PREVIEW_HALO = 64  # px of context for the preview: enough for a recognisable preview, fast on a CPU
PREVIEW_SHARE = 0.05  # at most this share of the training's time goes to live previews (their interval grows)
DEFAULT_CLASSES = "background, membrane"  # an example for a new labels layer


@dataclasses.dataclass
class TrainJob:
    """One Train or Retrain press: what the worker reads, and what the dock shows while it runs."""

    image_layer: Any
    labels_layer: Any
    image: Any
    labels: Any
    config: Any  # TrainConfig
    parent: Any = None  # the version being retrained (a ModelVersion), None for a new network
    pretrained: bool = False  # a new network starts from the image's self-supervised body, when there is one
    in_process: bool = True  # trains in the training process (training.remote), else on a thread of napari's
    ensemble: bool = False  # an ensemble's members train one after another (training.ensemble)

    @property
    def name(self) -> str:
        return str(self.labels_layer.name)


@dataclasses.dataclass
class TrainerReady:
    """Worker event: the trainer is built (the dock can pause, stop and preview it from now on)."""

    trainer: Any


@dataclasses.dataclass
class NewVersion:
    """Worker event: the finished run's network, to become a version trained on ``trained_on``."""

    model: Any
    metadata: Any
    trained_on: list[Any]


def _start_quietly(process: Any) -> None:
    """Start a training process ahead of need; a failure shows when a training needs it."""
    try:
        process.start()
    except Exception:  # noqa: BLE001 -- the run that needs the process starts it again and reports why it cannot
        pass


def named_classes(layer: Any) -> list[str]:
    """The class names a labels layer carries in ``metadata['class_names']``, in order of label value 1, 2, ...
    (``class k`` for a missing value; [] when it names none)."""
    named = (layer.metadata.get("class_names") if layer is not None else None) or {}
    values = sorted(int(k) for k in named if str(k).isdigit() and int(k) > 0)
    return layer_classes(layer, values[-1])[0] if values else []


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _loss_weight(value: float, maximum: float, tooltip: str) -> QDoubleSpinBox:
    """A spin box for the weight of an optional loss term; 0 reads "off"."""
    box = QDoubleSpinBox()
    box.setRange(0.0, maximum)
    box.setSingleStep(0.5)
    box.setValue(value)
    box.setSpecialValueText("off")
    box.setToolTip(tooltip)
    return box


class TrainWidget(QWidget):
    """Start / pause / stop training and retraining; loss and metrics plot; live preview of the view."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = get_session(napari_viewer)
        self.trainer: Any = None
        self.work: workers.Work | None = None
        self.preview_work: workers.Work | None = None
        self._last_preview = 0.0
        self._started_at = 0.0
        self.first_preview_after: float | None = None  # seconds from Start to the first live preview shown
        self.forest_preview_after: float | None = None  # ... to the random forest's preview shown before it
        self._job: TrainJob | None = None
        self._closing = False
        self._preview_model: Any = None
        self._preview_cost = 0.0  # seconds the last live preview took on the training thread

        self.image_combo = LayerCombo(napari_viewer, Image)
        self.labels_combo = LayerCombo(napari_viewer, Labels, skip=self._not_training_labels)
        self.class_edit = QLineEdit(DEFAULT_CLASSES)
        self.class_edit.setToolTip(
            "The classes of the chosen labels layer, in label order (1, 2, ...); they name the "
            "trained model's classes. Type other names to rename them, or names for "
            "'New labels layer'"
        )
        self._typed_classes = DEFAULT_CLASSES  # shown for a labels layer that names no classes
        self.new_labels_button = QPushButton("New labels layer")
        self.length = QSpinBox()
        self.length.setRange(1, 10_000_000)
        self.length.setValue(500)
        self.length_unit = QComboBox()
        self.length_unit.addItems(["steps", "minutes"])
        self.preview_check = QCheckBox("Live preview of the view")
        self.preview_check.setChecked(True)
        self.pretrain_check = QCheckBox("Learn the image while you paint")
        self.pretrain_check.setChecked(False)  # off by default: it did not beat training from scratch on both
        self.pretrain_check.setToolTip(  # benchmark volumes (README, stroke benchmark)
            "Self-supervised pretraining: while you paint, the network learns what the image looks like by "
            "predicting hidden pixels from their surroundings (no labels needed). A new training starts from "
            "what it learned. It pauses while a training runs and is remembered per image and network. "
            "Experimental: in our benchmarks it helped on one EM volume and not on another"
        )
        self.pretrain_status = QLabel("")
        self.pretrain_status.setWordWrap(True)
        self.pretraining = BackgroundPretraining(self.session, self.pretrain_status.setText)
        self._pretrain_timer = QTimer(self)
        self._pretrain_timer.setSingleShot(True)
        self._pretrain_timer.setInterval(PRETRAIN_DELAY_MS)
        self._pretrain_timer.timeout.connect(self._maybe_pretrain)
        self._warm_timer = QTimer(self)  # starts the training process, so that the first Train starts at once
        self._warm_timer.setSingleShot(True)
        self._warm_timer.setInterval(PRETRAIN_DELAY_MS)
        self._warm_timer.timeout.connect(self._warm_process)
        self._warm_timer.start()
        self._starts_from: Any = None  # the pretrained body the running training started from
        self.preview_check.setToolTip(
            "Every few seconds, predict the part of the image on screen with the "
            "network as it is now, into a 'live preview' layer (between training "
            "steps, taking at most a twentieth of the training's time)"
        )

        self.batch_size, self.patch_size, self.validate_every, self.patience, self.seed = (QSpinBox() for _ in range(5))
        for box, (lo, hi, value) in zip(
            (self.batch_size, self.patch_size, self.validate_every, self.patience, self.seed),
            ((1, 1024, 16), (0, 1024, 0), (1, 100_000, 50), (0, 1000, 10), (0, 2**31 - 1, 0)),
        ):
            box.setRange(lo, hi)
            box.setValue(value)
        self.patch_size.setSpecialValueText("auto")
        self.patience.setSpecialValueText("never stop early")
        self.validate_every.setToolTip(
            "How often to score the network on held-out strokes: a part of your strokes "
            "kept out of training, used only to check how well it does on unseen pixels"
        )
        self.patience.setToolTip(
            "Stop early when this many checks on the held-out strokes in a row bring no "
            "improvement; the best weights so far are kept"
        )
        self.patch_size.setToolTip(
            "Side of the image pieces shown to the network in one step; auto picks one that fits the network"
        )
        from napari_msd.training.engine import TrainConfig
        from napari_msd.training.optim import LR_SCHEDULES

        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(TrainConfig.learning_rate)
        self.lr_schedule = QComboBox()
        self.lr_schedule.addItems(LR_SCHEDULES)
        self.lr_schedule.setCurrentText(TrainConfig.lr_schedule)
        self.lr_schedule.setToolTip(
            "How the learning rate falls over the training's minutes or steps: linear and cosine end on small "
            "steps, which settles the network; constant keeps it"
        )
        self.preview_every = QDoubleSpinBox()
        self.preview_every.setRange(0.2, 60.0)
        self.preview_every.setValue(1.5)
        self.preview_every.setSuffix(" s")

        self.edge_weight = _loss_weight(
            TrainConfig.edge_weight,
            100.0,
            "Edge-aware smoothing: away from your "
            "strokes, neighbouring pixels are pushed to share a class unless an image "
            "edge separates them, so boundaries settle on edges (a Potts/CRF term). "
            "Higher is smoother; off disables it",
        )
        self.teacher_weight = _loss_weight(
            TrainConfig.teacher_weight,
            10.0,
            "Forest teacher: a quick random-forest "
            "classifier is fitted on your strokes in a few seconds, and the network "
            "also learns from the pixels of the painted slices the forest is sure "
            "about. On by default (weight 1; 0 = off)",
        )
        self.elastic = QCheckBox("Elastic deformation (4 px)")
        self.jitter = QCheckBox("Intensity jitter (±10%)")  # off, as on the command line: it lost on VNC (README)
        self.forest_check = QCheckBox("Forest probabilities as input")
        self.forest_check.setToolTip(
            "A new network also sees the class probabilities of a random forest fitted on your strokes, and learns "
            "where to trust them (on the painted slices out of fold: from a forest that did not see them). "
            "The forest is stored with the model. For 2D input on xy planes; not for ensembles or a pretrained "
            "start. Off by default (not yet ahead of the default on both test volumes); Retrain follows the "
            "version it starts from"
        )
        self.prior_check = QCheckBox("Prior correction")
        self.prior_check.setChecked(True)
        self.prior_check.setToolTip(
            "Strokes show every class about equally often, real images do not: after "
            "training, estimate each class's share of the image and shift the output to "
            "match (undone if the network then predicts one class nearly everywhere)"
        )
        self.process_check = QCheckBox("Train in a separate process")
        self.process_check.setChecked(True)
        self.process_check.setToolTip(
            "Run the training in a process of its own, started once and reused: it trains about twice as fast as "
            "in napari's process, and a crash in training cannot take napari down"
        )
        self._process: Any = None  # training.remote.TrainingProcess, started on the first run

        self.start_button = QPushButton("Train new model")
        self.retrain_button = QPushButton("Retrain")
        self.retrain_button.setToolTip(
            "Fine-tune the current version with the labels painted or corrected since "
            "it was trained. The earlier labels are replayed (shown again during "
            "training) so that it does not forget them; it becomes a new version only "
            "if it does better on held-out strokes"
        )
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.skip_button = QPushButton("Skip member")
        self.skip_button.setToolTip(
            "Ensembles: stop the member in training and leave it out of the ensemble (a retraining keeps its "
            "earlier weights); the next member starts. Stop ends the whole training"
        )
        self.skip_button.setVisible(False)
        self._member: tuple[int, int] | None = None  # an ensemble's member in training, and how many there are
        self._step_offset = 0  # steps of the ensemble's earlier members: the plot's steps run on across members
        self.status = QLabel("Paint a few strokes of each class, then train.")
        self.status.setWordWrap(True)
        # the dock's own bar, not napari's activity dock: while a napari progress bar is open, the activity
        # indicator's animation repaints the whole window ~30 times a second, and with software OpenGL (a VM, a
        # remote desktop) each repaint recomposes the window on the CPU: half a core taken from training
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.plot = TrainingPlot()
        self.plot.setToolTip(
            "Loss (falls as the network learns) and accuracy / IoU on held-out strokes: strokes "
            "kept out of training to check the network on pixels it has not learned from"
        )
        self._build_layout()

        self.new_labels_button.clicked.connect(self.new_labels_layer)
        self.start_button.clicked.connect(self.start)
        self.retrain_button.clicked.connect(self.retrain)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.skip_button.clicked.connect(self.skip_member)
        self.image_combo.currentIndexChanged.connect(self._remember_layers)
        self.image_combo.currentIndexChanged.connect(lambda *_: self._pretrain_timer.start())
        self.pretrain_check.toggled.connect(self._pretrain_toggled)
        self.labels_combo.currentIndexChanged.connect(self._remember_layers)
        self.labels_combo.currentIndexChanged.connect(self._show_layer_classes)
        self.class_edit.textEdited.connect(self._remember_typed_classes)
        self.session.versions_changed.connect(self._set_idle)
        workers.on_window_close(self, self.close_workers)
        self._remember_layers()
        self._show_layer_classes()
        self._set_idle()
        self._pretrain_timer.start()

    def _build_layout(self) -> None:
        data = QGroupBox("Data")
        form = QFormLayout(data)
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        row = QHBoxLayout()
        row.addWidget(self.class_edit, 1)
        row.addWidget(self.new_labels_button)
        form.addRow("Classes", row)
        length = QHBoxLayout()
        length.addWidget(self.length, 1)
        length.addWidget(self.length_unit)
        form.addRow("Train for", length)
        form.addRow(self.preview_check)
        form.addRow(self.pretrain_check)
        form.addRow(self.pretrain_status)

        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced settings")
        self.advanced_toggle.setCheckable(True)
        self.advanced = QWidget()
        adv = QFormLayout(self.advanced)
        adv.addRow("Batch size", self.batch_size)
        adv.addRow("Patch size (px)", self.patch_size)
        adv.addRow("Learning rate", self.learning_rate)
        adv.addRow("Learning-rate schedule", self.lr_schedule)
        adv.addRow("Validate every (steps)", self.validate_every)
        adv.addRow("Patience (validations)", self.patience)
        adv.addRow("Edge-aware smoothing", self.edge_weight)
        adv.addRow("Forest teacher", self.teacher_weight)
        adv.addRow("Seed", self.seed)
        adv.addRow("Preview every", self.preview_every)
        adv.addRow(self.jitter)
        adv.addRow(self.elastic)
        adv.addRow(self.forest_check)
        adv.addRow(self.prior_check)
        adv.addRow(self.process_check)
        self.advanced.setVisible(False)
        self.advanced_toggle.toggled.connect(self.advanced.setVisible)

        buttons = QHBoxLayout()
        for button in (self.start_button, self.retrain_button, self.pause_button, self.stop_button, self.skip_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(data)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)

    # -- learning the image while a person paints ----------------------------------------------
    def _maybe_pretrain(self) -> None:
        """Start learning the chosen image in the background (see .pretraining), when that is switched on."""
        layer = self.image_combo.layer()
        if self._closing or not self.pretrain_check.isChecked() or layer is None:
            return
        try:
            image = image_array(layer)
        except LayerError:
            return
        self.pretraining.start(image, layer.name)

    def _pretrain_toggled(self, on: bool) -> None:
        if on:
            self._pretrain_timer.start()
        else:
            self._pretrain_timer.stop()
            self.pretraining.stop()
            self.pretrain_status.setText("")

    def _not_training_labels(self, layer: Any) -> bool:
        return is_preview(layer) or bool(layer.metadata.get("napari_msd_output")) or layer in self.session.predictions

    def _remember_layers(self, *_: Any) -> None:
        image, labels = self.image_combo.layer(), self.labels_combo.layer()
        self.session.training_layers = (image.name, labels.name) if image is not None and labels is not None else None

    def _show_layer_classes(self, *_: Any) -> None:
        """Show the chosen labels layer's class names in the Classes box (the typed example for an unnamed one)."""
        layer = self.labels_combo.layer()
        if layer is not None:
            layer.events.metadata.connect(self._on_metadata)  # once per layer: napari skips a known callback
        names = named_classes(layer)
        self.class_edit.setText(", ".join(names) if names else self._typed_classes)

    def _on_metadata(self, event: Any) -> None:
        if event.source.name == self.labels_combo.currentText():
            self._show_layer_classes()

    def _remember_typed_classes(self, text: str) -> None:
        if not named_classes(self.labels_combo.layer()):
            self._typed_classes = text

    def _box_classes(self) -> list[str]:
        return [n.strip() for n in self.class_edit.text().split(",") if n.strip()]

    # -- labels ---------------------------------------------------------------------------------
    def new_labels_layer(self) -> Labels | None:
        """An empty labels layer for the chosen image, with the class names typed in the Classes box."""
        try:
            image = image_array(self.image_combo.layer())
        except LayerError as err:
            show_error(str(err))
            return None
        names = self._box_classes()
        if len(names) < 2 or len(set(names)) != len(names):
            show_error("type at least two different class names, separated by commas (e.g. background, membrane)")
            return None
        colors = default_class_colors(len(names))
        data = self.session.scratch(tuple(image.shape), labels_dtype(len(names)), like=image)
        source = self.image_combo.layer()
        layer = self.viewer.add_labels(
            data,
            name=f"{source.name} labels",
            colormap=class_colormap(colors),
            scale=source.scale,
            translate=source.translate,
            metadata={"class_names": {i + 1: n for i, n in enumerate(names)}},
        )
        layer.features = {"class": ["unlabeled", *names]}
        self.session.set_classes(names, colors)
        self.labels_combo.choose(layer)
        layer.mode = "paint"
        layer.selected_label = 1
        self.viewer.layers.selection.active = layer
        return layer

    # -- starting -------------------------------------------------------------------------------
    def _inputs(self) -> tuple[Any, Any, Any, Any]:
        image_layer, labels_layer = self.image_combo.layer(), self.labels_combo.layer()
        image = image_array(image_layer)
        labels = labels_array(labels_layer, image_layer, image)
        return image_layer, image, labels_layer, labels

    def _config(self, n_classes: int | None) -> Any:
        from napari_msd.training.augment import Augmentation
        from napari_msd.training.engine import TrainConfig

        s = self.session
        minutes = self.length_unit.currentText() == "minutes"
        names = list(s.class_names) if n_classes is not None and len(s.class_names) == n_classes else None
        colors = list(s.class_colors) if names is not None and len(s.class_colors) == n_classes else None
        model = {k: v for k, v in s.model_config.items() if k not in ("in_channels", "out_channels", "ndim")}
        return TrainConfig(
            arch=s.arch,
            model=model,
            input=s.input_spec,
            patch_size=self.patch_size.value() or None,
            batch_size=self.batch_size.value(),
            steps=None if minutes else self.length.value(),
            time_limit=60.0 * self.length.value() if minutes else None,
            learning_rate=self.learning_rate.value(),
            lr_schedule=self.lr_schedule.currentText(),
            validate_every=self.validate_every.value(),
            patience=self.patience.value(),
            seed=self.seed.value(),
            augmentation=Augmentation(
                elastic=4.0 if self.elastic.isChecked() else 0.0, intensity=0.1 if self.jitter.isChecked() else 0.0
            ),
            edge_weight=self.edge_weight.value(),
            teacher_weight=self.teacher_weight.value(),
            prior_correction=self.prior_check.isChecked(),
            forest_channels=self.forest_check.isChecked(),
            class_names=names,
            class_colors=colors,
            n_classes=n_classes,
        )

    def start(self) -> bool:
        """Train a new network (the Model dock's choice) on the chosen image and labels."""
        return self._launch(fine_tune=False)

    def retrain(self) -> bool:
        """Fine-tune the current version with labels changed since it was trained, replaying the others."""
        return self._launch(fine_tune=True)

    def _launch(self, fine_tune: bool) -> bool:
        if self.work is not None and self.work.running:
            show_error("training is already running; stop it first")
            return False
        parent = self.session.versions.current
        try:
            image_layer, image, labels_layer, labels = self._inputs()
            if fine_tune and parent is None:
                raise LayerError("no model to retrain yet: train a new model first (or load one in the Model dock)")
            spec = parent.metadata.input if fine_tune else self.session.input_spec
            check_model_input(spec, image, image_layer.name)
            if not fine_tune:
                self._classes_from(labels_layer)
            n_classes = None if fine_tune else (len(self.session.class_names) or None)
            config = self._config(n_classes)
            config.check()
        except (LayerError, ValueError) as err:
            show_error(str(err))
            return False
        self._job = TrainJob(
            image_layer,
            labels_layer,
            image,
            labels,
            config,
            parent=parent if fine_tune else None,
            pretrained=not fine_tune and self.pretrain_check.isChecked() and config.arch != "ensemble",
            in_process=self.process_check.isChecked(),
            ensemble=(parent.metadata.arch if fine_tune else config.arch) == "ensemble",
        )
        self._member, self._step_offset = None, 0
        self.pretraining.pause()  # two thread teams on the same cores would slow both
        self._closing = False
        self._preview_model = None
        self._prepare_preview(image_layer, image)
        self.forest_preview_after = None
        if not fine_tune:
            self._forest_preview(image_layer, image, labels)
        # steps, or percent of the time limit (an ensemble: of all its members)
        self.progress_bar.setRange(0, 100 if self._job.ensemble else config.steps or 100)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(f"{'Fine-tuning' if fine_tune else 'Training'}: %p%")
        self.progress_bar.setVisible(True)
        self.plot.clear()
        if fine_tune:
            self.plot.mark(0, f"fine-tuning {parent.name}")
        self.first_preview_after = None
        self._started_at = time.perf_counter()
        self._last_preview = 0.0
        self.trainer = None
        self._set_running(True)
        self.status.setText(
            "Reading labels…"
            if not self.process_check.isChecked() or (self._process is not None and self._process.alive)
            else "Reading labels and starting the training process…"
        )
        self.work = workers.start(self._train_events, self._on_event, self._on_done, "Training")
        self.work.on_cancel.append(lambda: self.trainer is not None and self.trainer.stop())
        return True

    def _classes_from(self, layer: Any) -> None:
        """Name the new model's classes after the labels layer's ``metadata['class_names']`` (a layer made by 'New
        labels layer', the sample's strokes, a reader's output), renamed as typed in the Classes box when it lists
        as many names; classes the layer does not name keep the session's names."""
        names = named_classes(layer)
        if not names:
            return
        typed = self._box_classes()
        if len(typed) == len(names) and len(set(typed)) == len(typed) and typed != names:
            names = typed  # renamed in the Classes box: the layer gets the new names too
            layer.metadata = {**layer.metadata, "class_names": {i + 1: n for i, n in enumerate(names)}}
        self.class_edit.setText(", ".join(names))
        s = self.session
        n = max(len(names), len(s.class_names))
        colors = [*layer_classes(layer, len(names))[1], *s.class_colors[len(names) : n]]
        s.set_classes([*names, *s.class_names[len(names) : n]], colors if len(colors) == n else [])

    def _train_events(self, work: workers.Work):
        """Worker thread: snapshot the labels, build the trainer, run it, hand over the result."""
        from napari_msd.training.corrections import copy_slabs
        from napari_msd.training.ensemble import make_trainer
        from napari_msd.training.retraining import retraining_data

        job, session = self._job, self.session
        assert job is not None
        labels = job.labels
        snapshot = copy_slabs(labels, session.scratch(tuple(labels.shape), labels.dtype, like=labels))
        parent = job.parent
        run = retraining_data(
            job.image,
            snapshot,
            job.name,
            parent.trained_on if parent is not None else [],
            lambda shape, dtype: session.scratch(shape, dtype, like=snapshot),
            parent=parent.name if parent is not None else "the model",
        )
        init = (parent.model, parent.metadata) if parent is not None else None
        config = job.config
        if job.pretrained:  # a new network starts from the image's self-supervised body, when there is one
            from napari_msd.models.registry import PRESETS

            net = {
                **PRESETS.get(config.arch, {}),
                **config.model,
                "in_channels": config.input.in_channels,
                "ndim": config.input.model_ndim,
            }
            config = dataclasses.replace(
                config, pretrained=self.pretraining.weights_for(job.image, config.arch, net, config.input)
            )
        if job.in_process:
            yield from self._remote_events(work, run, config, init)
            return
        trainer = make_trainer(run.data, config, init=init, replay=run.replay)  # an ensemble's, or one network's
        if work.cancelled.is_set():
            return
        self.trainer = trainer  # read by the main thread only after the event below arrives
        yield TrainerReady(trainer)
        events = trainer.run()
        try:
            for event in events:
                if work.cancelled.is_set():
                    return
                yield event
        finally:
            events.close()
        if trainer.step > 0 and trainer.collapsed is None and not trainer.kept_parent:
            yield NewVersion(trainer.snapshot(), trainer.metadata(), run.trained_on)

    def _training_process(self) -> Any:
        from napari_msd.training.remote import TrainingProcess

        if self._process is None:
            self._process = TrainingProcess(niceness=workers.BACKGROUND_NICENESS)
        return self._process

    def _warm_process(self) -> None:
        """Start the training process in the background (about two seconds of one core, once), unless training in
        it is off or the dock is closing."""
        if self._closing or not self.process_check.isChecked():
            return
        process = self._training_process()
        threading.Thread(target=_start_quietly, args=(process,), name="napari-msd process start", daemon=True).start()

    def _remote_events(self, work: workers.Work, run: Any, config: Any, init: Any):
        """Worker thread: the same run in the training process (training.remote); its events, then the result."""
        process = self._training_process()
        if work.cancelled.is_set():
            return
        remote = process.run(run.data, config, init=init, replay=run.replay)
        self.trainer = remote
        yield TrainerReady(remote)
        events = iter(remote)
        for event in events:
            if work.cancelled.is_set():
                remote.stop()
                for _ in events:  # the next run reads the same connection: take this one's to its end
                    pass
                return
            yield event
        if remote.result is not None:
            yield NewVersion(remote.result.model, remote.result.metadata, run.trained_on)

    # -- events (main thread) ---------------------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        from napari_msd.training.events import (
            CpuThreads,
            MemberEvent,
            MemberFinished,
            MemberStarted,
            Paused,
            TrainingFinished,
            TrainingStarted,
            TrainStep,
            Validated,
        )

        if isinstance(event, MemberStarted):
            self._member = (event.member, event.n_members)
            if event.member > 0:
                self.plot.mark(self._step_offset, f"member {event.member + 1}")
            return
        if isinstance(event, MemberFinished):
            self._step_offset += event.steps
            if not event.kept:
                show_info(f"napari-msd: member {event.member + 1}/{event.n_members} left out: {event.why}")
            return
        if isinstance(event, MemberEvent):
            if isinstance(event.event, TrainingFinished):
                return  # the member's: MemberFinished says what became of it; the ensemble's own comes last
            event = event.event
        member = (
            f"member {self._member[0] + 1}/{self._member[1]} · "
            if self._member is not None and self._job is not None and self._job.ensemble
            else ""
        )
        offset = self._step_offset
        if isinstance(event, TrainerReady):
            self.status.setText("Preparing…")
            self._starts_from = event.trainer.pretrained
        elif isinstance(event, NewVersion):
            self._add_version(event)
        elif isinstance(event, TrainingStarted):
            what = "Fine-tuning" if event.fine_tuning else "Training"
            px = ", ".join(f"{k}: {v:,}" for k, v in event.train_pixels.items())
            body = self._starts_from
            self.status.setText(
                f"{member}{what} on {event.device}; labeled px {px}"
                + (f"; starting from {body.describe()}" if body is not None else "")
                + ("; products in bfloat16" if event.products == "bfloat16" else "")
            )
        elif isinstance(event, TrainStep):
            self.plot.add_loss(offset + event.step, event.loss)
            self._maybe_preview()
            self._update_progress(event)
        elif isinstance(event, Validated):
            metrics = self._plot_metrics(event.metrics)
            self.plot.add_validation(offset + event.step, metrics)
            self.plot.set_best(offset + event.best_step)
        elif isinstance(event, Paused):
            self.pause_button.setText("Resume" if event.paused else "Pause")
        elif isinstance(event, CpuThreads):
            self.status.setText(f"{self.status.text().split(' · CPU: ')[0]} · CPU: {event.text}")
        elif isinstance(event, TrainingFinished):
            self._finished = event
            parent = self._job.parent if self._job is not None else None
            if event.collapsed:
                text = f"No new version: {event.collapsed}. Train longer or paint more strokes of the other classes" + (
                    f"; {parent.name} stays current" if parent is not None else ""
                )
                show_error(f"napari-msd: {text}")
                self.status.setText(text)
            elif event.kept_parent:
                why = (event.kept_parent_because or "it never beat the parent").replace("the parent", parent.name)
                text = f"No new version: {why}; {parent.name} stays current. Paint more corrections or train longer"
                show_info(f"napari-msd: {text}")
                self.status.setText(text)
            elif event.warning:
                show_info(f"napari-msd: warning: {event.warning}")
            if event.note and not event.collapsed and not event.kept_parent:
                show_info(f"napari-msd: {event.note}")

    def _update_progress(self, event: Any) -> None:
        ensemble = self._job is not None and self._job.ensemble and self._member is not None
        text = (
            f"step {event.step} · loss {event.loss:.3f} · {event.samples_per_s:.1f} patches/s · "
            f"ETA {_fmt_time(event.eta)}"
        )
        if ensemble:
            assert self._member is not None  # checked above
            m, n = self._member
            self.status.setText(f"member {m + 1}/{n} · {text}" + (" of this member" if event.eta is not None else ""))
            self.progress_bar.setValue(min(100, int(100 * (m + (event.progress or 0)) / n)))
            return
        self.status.setText(text)
        target = event.step if self._job is not None and self._job.config.steps else int(100 * (event.progress or 0))
        self.progress_bar.setValue(min(self.progress_bar.maximum(), target))

    @staticmethod
    def _plot_metrics(metrics: dict[str, Any]) -> dict[str, float]:
        out = {}
        if isinstance(metrics.get("global_accuracy"), float):
            out["held-out accuracy"] = metrics["global_accuracy"]
        if isinstance(metrics.get("mean_iou"), float):
            out["held-out mean IoU"] = metrics["mean_iou"]
        return out

    def _add_version(self, new: NewVersion) -> None:
        finished = getattr(self, "_finished", None)
        parent = self._job.parent if self._job is not None else None
        metadata = new.metadata
        version = self.session.versions.add(
            new.model,
            metadata,
            metrics=dict(finished.best_metrics) if finished else {},
            parent=parent.name if parent is not None else None,
            trained_on=new.trained_on,
            steps=finished.steps if finished else 0,
        )
        self.session.set_classes(list(metadata.class_names), list(metadata.class_colors))
        reason = f" ({finished.reason})" if finished else ""
        show_info(f"napari-msd: {version.describe()}{reason}")
        self.status.setText(f"Finished{reason}: {version.describe()}")
        self.session.versions_changed.emit()

    def _on_done(self, work: workers.Work) -> None:
        self.progress_bar.setVisible(False)
        self.trainer = None
        self._finished = None
        self._starts_from = None
        if work.error is not None:
            self.status.setText(f"Training failed: {work.error}")
        self._set_running(False)
        self.pretraining.resume()
        self._pretrain_timer.start()  # the Model dock may have chosen another network meanwhile: learn for it

    # -- control --------------------------------------------------------------------------------
    def toggle_pause(self) -> None:
        trainer = self.trainer
        if trainer is None:
            return
        if trainer.paused:
            trainer.resume()
        else:
            trainer.pause()
            self.status.setText("Pausing after this step…")

    def skip_member(self) -> None:
        """An ensemble's training: leave the member in training out (a retraining: it keeps its earlier weights) and
        start the next."""
        skip = getattr(self.trainer, "skip_member", None)
        if skip is not None and self._member is not None:
            skip()
            self.status.setText(f"Skipping member {self._member[0] + 1}/{self._member[1]}…")

    def stop(self) -> None:
        """End training after the current step; the best weights so far become the new version."""
        if self.trainer is not None:
            self.trainer.stop()
            self.status.setText("Stopping after this step…")
        elif self.work is not None and self.work.running:
            self.work.cancel()

    def close_workers(self, timeout: float = 10.0) -> None:
        """End training, preview and pretraining now, without keeping a result (the viewer is closing)."""
        self._closing = True
        self._pretrain_timer.stop()
        self._warm_timer.stop()
        self.pretraining.stop()
        for work in (self.work, self.preview_work):
            if work is not None and work.running:
                work.cancel()
        for work in (self.work, self.preview_work):
            if work is not None:
                work.wait(timeout)
        if self._process is not None:
            self._process.close()
            self._process = None

    def closeEvent(self, event: Any) -> None:  # noqa: N802 -- Qt API
        self.close_workers()
        super().closeEvent(event)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.retrain_button.setEnabled(not running and self.session.versions.current is not None)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.skip_button.setVisible(running and self._job is not None and self._job.ensemble)
        self.new_labels_button.setEnabled(not running)
        self.pause_button.setText("Pause")
        current = self.session.versions.current
        self.retrain_button.setText(f"Retrain {current.name}" if current is not None else "Retrain")

    def _set_idle(self, *_: Any) -> None:
        self._set_running(self.work is not None and self.work.running)

    # -- live preview ---------------------------------------------------------------------------
    def _maybe_preview(self) -> None:
        if not self.preview_check.isChecked() or self.trainer is None:
            return
        if self.preview_work is not None and self.preview_work.running:
            return
        interval = max(self.preview_every.value(), self._preview_cost / PREVIEW_SHARE)  # a share of the training's time
        if time.perf_counter() - self._last_preview < interval and self.first_preview_after is not None:
            return
        self.request_preview()

    def _forest_preview(self, source: Any, image: Any, labels: Any) -> None:
        """An answer within seconds of pressing Train, as ilastik's live update gives: a random forest fitted on
        the strokes (training.forest) predicts the view into the preview layer until the network's first
        preview replaces it."""
        from .viewport import visible_region

        if not self.preview_check.isChecked():
            return
        region = visible_region(self.viewer, source, tuple(image.shape))
        n_classes = len(self.session.class_names) or None

        def predict(work: workers.Work):
            from napari_msd.training.forest import PixelForest
            from napari_msd.training.sampling import TrainingData

            try:
                forest = PixelForest.fit(TrainingData(image, labels, "strokes"), n_classes, n_estimators=50)
                z = region[0].start if len(region) == 3 else None
                probs = forest.predict_region(
                    image, z, region[-2].start, region[-2].stop, region[-1].start, region[-1].stop
                )
            except (ValueError, MemoryError):  # e.g. one class painted: the network's preview will tell
                return
            out = (probs.argmax(0) + 1).astype(np.uint8)
            yield region, out[None] if len(region) == 3 else out

        def show(event: tuple[Any, np.ndarray]) -> None:
            if self.first_preview_after is not None:  # the network was quicker: never show an older answer
                return
            self._show_preview(event)
            self.first_preview_after = None  # the network's first preview is still to come
            self.forest_preview_after = time.perf_counter() - self._started_at
            self.status.setText(
                f"{self.status.text()} · first answer from a random forest; the network's preview replaces it"
            )

        self.preview_work = workers.start(predict, show, lambda work: None, "Forest preview")

    def request_preview(self) -> None:
        """Predict the region on screen with the current weights, in a worker; shown in the preview layer."""
        from napari_msd.training.remote import PreviewResult, RemoteRun, predict_view

        from .viewport import visible_region

        trainer, job = self.trainer, self._job
        if trainer is None or job is None:
            return
        image = job.image
        region = visible_region(self.viewer, job.image_layer, tuple(image.shape))
        self._last_preview = time.perf_counter()

        def forward() -> PreviewResult:  # on the training thread, between two steps (one network per run)
            result, self._preview_model = predict_view(trainer, image, region, PREVIEW_HALO, self._preview_model)
            return result

        def predict(work: workers.Work):
            try:  # this worker only waits: the forward runs with the training's threads, not beside them
                if isinstance(trainer, RemoteRun):
                    done = trainer.preview(region, PREVIEW_HALO).result()
                else:
                    done = trainer.between_steps(forward).result()
            except CancelledError:  # training ended first
                return
            self._preview_cost = done.seconds
            yield done.region, done.labels

        self.preview_work = workers.start(predict, self._show_preview, lambda work: None, "Live preview")

    def _prepare_preview(self, source: Any, image: Any) -> None:
        """Create (or re-place) the preview layer for the view now, so that showing a preview during training
        only updates pixels: adding a layer costs napari a few hundred milliseconds of the event loop."""
        from .viewport import visible_region

        if not self.preview_check.isChecked():
            return
        region = visible_region(self.viewer, source, tuple(image.shape))
        shape = tuple(r.stop - r.start for r in region)
        layer = self._preview_layer()
        if layer is None:
            colors = self.session.class_colors or default_class_colors(16)
            active = self.viewer.layers.selection.active
            self.viewer.add_labels(
                np.zeros(shape, np.uint8),
                name=PREVIEW_LAYER,
                opacity=0.45,
                scale=source.scale,
                translate=self._placement(source, region),
                colormap=class_colormap(list(colors)),
                metadata={"napari_msd_preview": True},
            )
            if active is not None and active in self.viewer.layers:  # keep painting where the user was
                self.viewer.layers.selection.active = active

    def _preview_layer(self) -> Any:
        for layer in self.viewer.layers:
            if is_preview(layer):
                return layer
        return None

    @staticmethod
    def _placement(source: Any, region: Any) -> np.ndarray:
        offset = np.array([r.start for r in region], float) * np.asarray(source.scale, float)
        return np.asarray(source.translate, float) + offset

    def _show_preview(self, event: tuple[Any, np.ndarray]) -> None:
        region, labels = event
        source = self._job.image_layer if self._job is not None else None
        if source is None or source not in self.viewer.layers or self._closing:
            return  # the image went away (or the viewer is closing) while the preview was computed
        layer = self._preview_layer()
        if layer is None:  # the user deleted it: they do not want it back during this run
            return
        translate = self._placement(source, region)
        if layer.data.shape == labels.shape and layer.data.dtype == labels.dtype:
            layer.data[...] = labels
            if not np.allclose(layer.translate, translate):
                layer.translate = translate
            layer.refresh()
        else:
            layer.data = labels
            layer.translate = translate
        if self.session.class_colors and len(layer.colormap.color_dict) != len(self.session.class_colors) + 2:
            layer.colormap = class_colormap(self.session.class_colors)
        if self.first_preview_after is None:
            self.first_preview_after = time.perf_counter() - self._started_at
