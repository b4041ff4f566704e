"""The training engine: a generator of events that the napari docks and the CLI both drive.

``Trainer(data, config).run()`` yields :mod:`~napari_msd.training.events` records. Between
steps it honours :meth:`Trainer.stop`, :meth:`Trainer.pause` and :meth:`Trainer.resume`
(callable from any thread), and :meth:`Trainer.snapshot` hands over a copy of the current
network at any time (the live preview uses it). Patches are cut and augmented by one
background thread while the network trains. The best weights by validation score are kept
and, with ``output``, saved atomically whenever they improve, so a killed run leaves the best
model so far and never a truncated file.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from .. import __version__
from ..base.device import cpu_threads, describe_device, select_device
from ..base.forest_channels import FittedForest
from ..base.inputs import InputSpec, network_input, plane_axes
from ..base.normalization import Normalization, estimate_normalization
from ..inference import halo as inference_halo
from ..inference.predictor import Predictor
from ..io.model_file import ModelMetadata, load_model, save_model
from ..models.forest_buffers import forest_of, model_config
from ..models.msd import MSDNet
from ..models.precision import PRECISIONS, training_dtype, training_products
from ..models.registry import PRESETS, build_model
from . import deep_supervision
from . import health as net_health
from . import metrics as seg_metrics
from .augment import Augmentation
from .between_steps import BetweenSteps
from .context import ForestContext, fit_context, forest_channels_apply
from .cpu_share import CpuShare
from .distill import ParentTeacher
from .events import CpuThreads, Paused, Saved, TrainingFinished, TrainingStarted, TrainStep, Validated
from .losses import SparseLoss, auto_class_weights
from .optim import Adam, check_lr_schedule, scheduled_lr
from .potts import EdgePotts
from .pretrain import apply_pretrained, check_compatible, load_pretrained
from .prior import (
    erased_classes,
    estimate_prior,
    output_bias,
    safe_scale,
    scaled_prior,
    shift_output_bias,
    undo_prior_shift,
)
from .sampling import IGNORE, PatchSampler, TrainingData, TrainingDataError, split, validation_tiles
from .seen import SeenRings
from .teacher import forest_pseudo_labels
from .weight_average import WeightAverage

METRICS = ("global_accuracy", "class_accuracy", "mean_iou")
FORGET_TOLERANCE = 0.02  # class accuracy on held-out earlier labels a fine-tuned version may lose
T = TypeVar("T")

# Class accuracy on the (class-balanced) held-out strokes the prior correction may cost before it is undone; None:
# no bound, only a collapsed result (training.health) undoes it. Some loss is right: held-out strokes are
# class-balanced, the image is not. At 0.02, and still at 0.15, the correction was undone on the four-class VNC
# volume, where forced it raised the mean class IoU on unpainted slices in all four runs (README, stroke benchmark).
PRIOR_MAX_LOSS: float | None = None
TIME_GRACE = 0.25  # share of a time limit the wrap-up (last validation, halo measurement) may run past it
_OPENMP = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def fine_tuning_provenance(source: Any, parent: ModelMetadata, replay: Sequence[Any]) -> dict[str, Any]:
    """What a fine-tuned model records of its parent (``fine_tuned_from``) and of the earlier labels replayed."""
    return {
        "fine_tuned_from": {
            "source": source,
            "created": parent.provenance.get("created"),
            "steps": parent.provenance.get("steps"),
        },
        "replayed_images": len(replay),
    }


@dataclass
class TrainConfig:
    """Everything that shapes a training run. ``steps`` and/or ``time_limit`` (seconds) bound it."""

    arch: str = "msd"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of PRESETS[arch], e.g. {"depth": 50}
    input: InputSpec = field(default_factory=InputSpec)
    patch_size: int | None = None  # default 64 in 2D, 48 in 3D; shrunk to fit small images
    batch_size: int = 16
    steps: int | None = 1000
    time_limit: float | None = None
    learning_rate: float = 1e-3
    validate_every: int = 50
    patience: int = 10  # validations without improvement before stopping early; 0 never stops early
    val_fraction: float = 0.15
    metric: str = "global_accuracy"
    augmentation: Augmentation = field(default_factory=Augmentation)
    class_weights: Literal["auto"] | Sequence[float] | None = "auto"
    dice_weight: float | None = None  # weight of a Dice term added to cross-entropy; None: the network's own (MUNet: 1)
    edge_weight: float = 2.0  # edge-aware Potts term on all patch pixels (training.potts); 0 = off
    teacher_weight: float = 1.0  # loss weight of a random forest's confident labels (training.teacher); 0 = off
    teacher_confidence: float = 0.8  # the forest's probability a pixel needs to be taught
    teacher_planes: int = 0  # unpainted planes of a volume the forest also labels (a quarter of the patches)
    forest_channels: bool = False  # a new network also takes a forest's class probabilities as input
    #                                (training.context; 2D input on xy planes); fine-tuning follows the parent
    teacher_refit: bool = False  # fine-tuning: the forest also learns the new labels (else only the replayed ones:
    #                              corrections sit where a forest errs, and learning them made its labels worse)
    device: str = "auto"
    threads: int | None = None  # CPU compute threads; None: the cores other processes leave free (cpu_share)
    amp: bool = True
    seed: int = 0
    class_names: list[str] | None = None
    n_classes: int | None = None  # outputs of a new model; default: the highest label painted
    class_colors: list[str] | None = None
    replay_fraction: float = 0.5
    measure_halo: bool = True  # measure the effective halo after training and store it with the model
    prior_correction: bool = True  # adapt the output bias to the image's class prior (training.prior)
    pretrained: str | None = None  # a new network starts from this self-supervised body (training.pretrain)
    weight_average: float = 0.0  # decay of the weights' running average, the network judged and kept; 0 = off
    fine_tune_lr_factor: float = 1.0  # the learning rate is multiplied by this when training starts from a model
    lr_schedule: str = "constant"  # decay of the learning rate over the steps or time limit (optim.LR_SCHEDULES)
    fine_tune_warmup: int = 0  # steps over which a fine-tuning's learning rate rises linearly to its value; 0 = off
    seen_tolerance: float = 0.03  # fine-tuning: share of the prediction left as it was around the corrections it may
    #                               change, or the parent is kept (training.seen); 1 = not checked
    distill_weight: float = (
        0.0  # fine-tuning: weight of the parent's predictions on unlabeled pixels (training.distill),
    )
    #                              which then replace the forest teacher; 0 = off
    precision: str = "float32"  # MS-D's products in training steps (models.precision): "bfloat16" (about 1.3x faster
    #                             steps where the CPU has it; lost on VNC, README), "auto" (as forwards without
    #                             gradients choose: NAPARI_MSD_PRECISION, or bfloat16 where measured faster)

    def check(self) -> None:
        if self.steps is None and self.time_limit is None:
            raise ValueError("give a number of steps or a time limit, or training would never end")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"the time limit must be positive, got {self.time_limit}")
        if self.batch_size < 1 or self.validate_every < 1:
            raise ValueError("batch size and validation interval must be at least 1")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.n_classes is not None and self.n_classes < 2:
            raise ValueError(f"a model needs at least 2 classes, got n_classes={self.n_classes}")
        if self.teacher_planes < 0:
            raise ValueError(
                f"teacher_planes is a number of planes (0 = only the painted ones), got {self.teacher_planes}"
            )
        if self.teacher_weight < 0 or not 0 < self.teacher_confidence <= 1:
            raise ValueError(
                f"the teacher needs a weight >= 0 (0 = off) and a confidence in (0, 1], got "
                f"{self.teacher_weight} and {self.teacher_confidence}"
            )
        if self.edge_weight < 0:
            raise ValueError(f"the edge-aware loss weight must be >= 0 (0 = off), got {self.edge_weight}")
        if not 0 <= self.seen_tolerance <= 1:
            raise ValueError(f"seen_tolerance is a share in [0, 1] (1 = not checked), got {self.seen_tolerance}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0 (0 = off), got {self.distill_weight}")
        if self.fine_tune_warmup < 0:
            raise ValueError(f"fine_tune_warmup is a number of steps (0 = off), got {self.fine_tune_warmup}")
        check_lr_schedule(self.lr_schedule)
        if self.fine_tune_lr_factor <= 0:
            raise ValueError(f"fine_tune_lr_factor must be positive, got {self.fine_tune_lr_factor}")
        if not 0 <= self.weight_average < 1:
            raise ValueError(f"weight_average is a decay in [0, 1) (0 = off), got {self.weight_average}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def _check_data(data: Sequence[TrainingData], spec: InputSpec) -> None:
    if not data:
        raise TrainingDataError("no training data given; pass at least one image with labels")
    for d in data:
        spec.check_image(len(d.image.shape), d.name)
        if tuple(d.labels.shape) != tuple(d.image.shape):
            raise TrainingDataError(
                f"labels {tuple(d.labels.shape)} and image {tuple(d.image.shape)} of {d.name} differ in shape; "
                "paint the labels on a layer of the image's shape"
            )
        kind = np.dtype(d.labels.dtype).kind
        if kind not in "iub":
            raise TrainingDataError(
                f"labels of {d.name} are {d.labels.dtype}; labels must be integers (0 = unlabeled, 1..K = classes)"
            )
        if np.dtype(d.image.dtype).kind not in "iuf":
            raise TrainingDataError(f"image {d.name} has dtype {d.image.dtype}; use a grey-value image")


def _patch_size(data: Sequence[TrainingData], spec: InputSpec, requested: int | None) -> tuple[int, ...]:
    """One patch shape for every batch: the requested size, shrunk to the smallest image extent."""
    if spec.mode == "3d":
        side = requested or 48
        depth = min([side] + [d.image.shape[0] for d in data])
        return (depth,) + tuple(min([side] + [d.image.shape[a] for d in data]) for a in (1, 2))
    side = requested or 64
    extents = [side, side]
    for d in data:
        for orientation in spec.orientations:
            (a, b), _ = plane_axes(len(d.image.shape), orientation)
            extents = [min(extents[0], d.image.shape[a]), min(extents[1], d.image.shape[b])]
    return tuple(extents)


class Trainer:
    """Train a network on sparse labels; see the module docstring.

    ``init`` fine-tunes an existing model (a path, or ``(model, metadata)``): its architecture,
    input cutting and normalisation are kept, and ``replay`` data (the labels it was trained on)
    are mixed into every batch with ``config.replay_fraction`` so earlier annotations are not
    forgotten. ``output``, if given, must not exist unless ``overwrite``. ``normalization``: a new network's
    input normalisation instead of one estimated from the data (an ensemble's members are all fed alike).
    """

    def __init__(
        self,
        data: Sequence[TrainingData],
        config: TrainConfig | None = None,
        *,
        init: str | Path | tuple[torch.nn.Module, ModelMetadata] | None = None,
        replay: Sequence[TrainingData] = (),
        output: str | Path | None = None,
        overwrite: bool = False,
        normalization: Normalization | None = None,
    ):
        self.config = config = copy.deepcopy(config) if config is not None else TrainConfig()
        config.check()
        self.output = Path(output) if output is not None else None
        if self.output is not None and self.output.exists() and not overwrite:
            raise FileExistsError(f"{self.output} already exists; choose another file name or allow overwriting")
        self.base_metadata: ModelMetadata | None = None
        if init is not None:
            if isinstance(init, str | Path):
                model, self.base_metadata = load_model(init)
            else:  # never train the caller's own object: it is the previous model version
                model, self.base_metadata = copy.deepcopy(init[0]), copy.deepcopy(init[1])
            self.init_source = str(init) if isinstance(init, str | Path) else "model in memory"
            config.arch = self.base_metadata.arch
            config.input = InputSpec.from_dict(self.base_metadata.input or {})
        self.data, self.replay = list(data), list(replay)
        _check_data(self.data + self.replay, config.input)

        self.indices = [split(d, config.input, config.val_fraction, config.seed + i) for i, d in enumerate(self.data)]
        self.replay_indices = [
            split(d, config.input, config.val_fraction, config.seed + 1000 + i) for i, d in enumerate(self.replay)
        ]
        all_indices = self.indices + self.replay_indices
        counts: dict[int, int] = {}
        for ix in all_indices:
            for c, n in ix.count("train").items():
                counts[c] = counts.get(c, 0) + n
            for c in ix.count("val"):
                counts.setdefault(c, 0)
        if not counts:
            raise TrainingDataError("no labeled pixel found; paint a few strokes of each class (label 0 is unlabeled)")
        if len(counts) < 2 and init is None:
            raise TrainingDataError(f"only class {next(iter(counts))} is labeled; paint at least two classes")
        n_classes = max(counts)
        if init is None and config.n_classes is not None:
            if n_classes > config.n_classes:
                raise TrainingDataError(
                    f"labels use class {n_classes} but {config.n_classes} classes are defined; "
                    "add a class or repaint those pixels"
                )
            n_classes = config.n_classes
        if init is not None:
            out_channels: Any = model.out_channels  # of every registered network (nn.Module types it as a tensor)
            n_out = int(out_channels)
            if n_classes > n_out:
                raise TrainingDataError(
                    f"labels use class {n_classes} but the model predicts {n_out} classes; "
                    "train a new model for more classes"
                )
            n_classes = n_out
        if self.base_metadata is not None and self.base_metadata.normalization:
            self.normalization = Normalization.from_dict(self.base_metadata.normalization)
        elif normalization is not None:
            self.normalization = normalization
        else:  # a new model, or one saved without normalisation: estimate it from the data
            self.normalization = estimate_normalization([d.image for d in self.data + self.replay], seed=config.seed)
        self.n_classes, self.counts = n_classes, counts
        self.class_names = list(
            config.class_names
            or (self.base_metadata.class_names if self.base_metadata else [f"class {i + 1}" for i in range(n_classes)])
        )
        if len(self.class_names) != n_classes:
            raise ValueError(f"{len(self.class_names)} class names given for {n_classes} classes; give one per class")
        self.class_colors = config.class_colors or (self.base_metadata.class_colors if self.base_metadata else None)

        self.device = select_device(config.device)
        self.cpu_share: CpuShare | None = None  # sizes the thread team to the free cores (training.cpu_share)
        if self.device.type == "cpu":
            torch.set_num_threads(config.threads or cpu_threads())
            if config.threads is None:
                self.cpu_share = CpuShare(cpu_threads())
        torch.manual_seed(config.seed)
        self.pretrained = None
        self.context: ForestContext | None = None  # the forest channels of the training images (training.context)
        self.context_seconds = 0.0  # spent fitting them: counted against the time limit
        use_forest = forest_channels_apply(config) if init is None else forest_of(model) is not None
        if init is None:
            net_config = {
                **PRESETS.get(config.arch, {}),
                **config.model,
                "in_channels": config.input.in_channels + (n_classes if use_forest else 0),
                "out_channels": n_classes,
                "ndim": config.input.model_ndim,
            }
            model = build_model(config.arch, net_config)
            if config.pretrained:
                self.pretrained = body = load_pretrained(config.pretrained)
                check_compatible(body, config.arch, net_config, config.input)
                apply_pretrained(model, body)
                self.normalization = Normalization.from_dict(body.normalization)  # what the body learned on
        if use_forest:
            t0 = time.perf_counter()
            parent_forest = forest_of(model)
            self.context = fit_context(
                all_indices,
                n_classes,
                config.seed,
                config.threads,
                forest=None if parent_forest is None else FittedForest.from_buffers(parent_forest),
                fit_on=None if parent_forest is None else self.replay_indices,  # the parent's forest learned those
            )
            if parent_forest is None:
                model.forest = self.context.forest.to_buffers()
            self.context_seconds = time.perf_counter() - t0
        context = None if self.context is None else self.context.region
        self.model = model.to(self.device).train()
        self.parent_prior_undone = None  # fine-tuning starts from the parent as trained, its prior correction undone
        self.seen: SeenRings | None = None  # fine-tuning: the parent's prediction around the corrections (.seen)
        self._parent_state: dict[str, torch.Tensor] | None = None
        if self.base_metadata is not None:
            self._parent_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}  # as saved
            if config.input.mode != "3d" and config.seen_tolerance < 1:
                self.seen = SeenRings(
                    self.model,
                    self.indices,
                    self.replay,
                    config.input,
                    self.normalization,
                    self.device,
                    seed=config.seed,
                    context=None if self.context is None else self.context.forest.channels,  # as the parent predicts
                )
            self.parent_prior_undone = undo_prior_shift(
                self.model, self.base_metadata.provenance, self.base_metadata.class_names
            )
        self.distill = (
            ParentTeacher(self.model, config.distill_weight)
            if self.base_metadata is not None and config.distill_weight > 0
            else None
        )
        self.patch_size = _patch_size(self.data + self.replay, config.input, config.patch_size)
        if init is not None and self.replay_indices:
            # fine-tuning: the earlier labels' held-out tiles come last and are also scored apart (see _validate)
            tiles = [
                validation_tiles(
                    group,
                    config.input,
                    self.patch_size,
                    n_classes,
                    self.normalization,
                    max_tiles=16,
                    seed=config.seed,
                    context=context,
                )
                for group in (self.indices, self.replay_indices)
            ]
            self.val_tiles, self.replay_from = tiles[0] + tiles[1], len(tiles[0])
        else:
            self.val_tiles = validation_tiles(
                all_indices,
                config.input,
                self.patch_size,
                n_classes,
                self.normalization,
                seed=config.seed,
                context=context,
            )
            self.replay_from = len(self.val_tiles)  # no replayed tiles
        self.parent_replay_accuracy: float | None = None
        weights = config.class_weights
        if weights == "auto":
            weights = auto_class_weights(counts, n_classes)
        dice = config.dice_weight if config.dice_weight is not None else getattr(self.model, "dice_weight", 0.0)
        self.loss_fn = SparseLoss(n_classes, weights, float(dice)).to(self.device)
        # the image's centre channel guides the edge-aware loss (the forest's channels come after the image's)
        guide = config.input.in_channels // 2
        self.edge_loss = EdgePotts(config.edge_weight, guide=guide) if config.edge_weight > 0 else None
        lr = config.learning_rate * (config.fine_tune_lr_factor if init is not None else 1.0)
        self.optimizer = Adam(self.model.parameters(), lr=lr)  # not torch.optim: see .optim
        self.lr = lr
        # a fresh Adam moves every weight by about the learning rate on its first steps (its moments are not yet
        # estimated): a warm-up keeps those first steps from throwing a fine-tuned parent far from where it was
        self.warmup = config.fine_tune_warmup if init is not None else 0
        # fine-tuning: the average starts at the parent and moves at its full decay from the first step
        self.average = (
            WeightAverage(self.model, config.weight_average, ramp=init is None) if config.weight_average > 0 else None
        )
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        # MS-D's products in training steps: bfloat16 where chosen or measured faster here; None: not an MS-D
        msd = any(isinstance(m, MSDNet) for m in self.model.modules())
        self.products = training_dtype(self.device, config.precision) if msd else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._between = BetweenSteps()
        self.step = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None
        self.best_score, self.best_loss = -math.inf, math.inf
        self.last_gain_step = 0
        self.effective_halo: int | None = None
        self.class_prior: list[float] | None = None
        self.prior_refused: str | None = None  # why the class-prior correction was not applied, in words
        self.prior_scale = 0.0  # the share of the estimated class-prior correction applied (training.prior)
        self.prior_scaled: str | None = None  # why only that share of it was applied, in words
        self.best_metrics: dict = {}
        self.best_health: net_health.Health | None = None
        self.last_health: net_health.Health | None = None
        self.health: net_health.Health | None = None  # of the result, after run()
        self.teacher_active = False
        self.kept_parent = False  # after run(): fine-tuning gave no better network; the parent's weights are the result
        self.kept_parent_because: str | None = None  # why, in words
        self.seen_agreement: float | None = (
            None  # after run(): the result's agreement with the parent around corrections
        )
        self._parent_metrics: dict = {}  # the parent's figures on the held-out labels (a fine-tuning's step 0)
        self._parent_health: net_health.Health | None = None
        self.halo_skipped = False  # after run(): the time limit left no time to measure the halo (receptive field used)

    # -- control, from any thread -------------------------------------------------------------
    def stop(self) -> None:
        """Finish after the current step (the best model is kept and saved)."""
        self._stop.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def between_steps(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the training thread between two steps (or while paused) and return its future: work such
        as a live preview then shares the training's compute threads instead of competing with them (see
        :mod:`.between_steps`); its seconds count as training time. Before :meth:`run` starts and once it has finished,
        ``fn`` runs at once; between the end of its loop and its last event, the future is cancelled."""
        return self._between.submit(fn)

    def snapshot(self, into: torch.nn.Module | None = None) -> torch.nn.Module:
        """An independent copy of the network as it is now, in eval mode on the CPU; ``into``: an earlier
        snapshot to refresh in place (cheaper than building a new network, e.g. for a live preview)."""
        with self._lock:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self._judged.state_dict().items()}
        net: Any = self.model  # a registered network: arch, config() (nn.Module types them as tensors)
        twin = build_model(net.arch, model_config(net)) if into is None else into
        twin.load_state_dict(state)
        return twin.eval()

    def metadata(self) -> ModelMetadata:
        """Metadata of the model as it would be saved now."""
        net: Any = self.model  # a registered network: arch, config(), receptive_field (nn.Module types them as tensors)
        return ModelMetadata(
            arch=net.arch,
            config=model_config(net),
            class_names=self.class_names,
            receptive_field=int(net.receptive_field),
            class_colors=list(self.class_colors or []),
            normalization=self.normalization.to_dict(),
            provenance=self._provenance(),
            input=self.config.input.to_dict(),
            effective_halo=self.effective_halo,
        )

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> Iterator[Any]:
        """Train, yielding events; ends with :class:`TrainingFinished`."""
        cfg = self.config
        names = self.class_names
        yield TrainingStarted(
            device=describe_device(self.device),
            n_parameters=sum(p.numel() for p in self.model.parameters()),
            patch_size=self.patch_size,
            class_names=names,
            train_pixels={names[c - 1]: n for c, n in sorted(self._pixels("train").items()) if c <= len(names)},
            val_pixels={names[c - 1]: n for c, n in sorted(self._pixels("val").items()) if c <= len(names)},
            fine_tuning=self.base_metadata is not None,
            forest_channels=0 if self.context is None else self.context.channels,
            products="" if self.products is None else str(self.products).removeprefix("torch."),
        )
        # elapsed: seconds of steps and validations, pauses excluded, and of fitting the forest channels
        elapsed, reason, validated_at = self.context_seconds, "steps", -1
        if self.base_metadata is not None and self.val_tiles:
            t0 = time.perf_counter()
            event = self._validate()  # the parent's score on the same held-out labels: the bar to beat
            elapsed += time.perf_counter() - t0
            yield event
        pseudo = None
        painted = {c for ix in self.indices + self.replay_indices for c, xy in ix.train.items() if len(xy)}
        if (
            cfg.teacher_weight > 0 and self.distill is None and cfg.input.mode != "3d" and len(painted) >= 2
        ):  # a forest needs two classes; a parent teaching a fine-tuning replaces it
            t0 = time.perf_counter()  # the forest's seconds count against the time limit
            earlier = [ix for ix in self.replay_indices if ix.train]
            if len({c for ix in earlier for c, xy in ix.train.items() if len(xy)}) < 2:
                earlier = []  # a forest needs two classes: it learns the new labels too
            pseudo = forest_pseudo_labels(
                self.indices + self.replay_indices,
                self.n_classes,
                cfg.teacher_confidence,
                cfg.seed,
                cfg.threads,
                cfg.teacher_planes,
                fit_on=None if cfg.teacher_refit or not earlier else earlier,
            )  # its own forest: the channels' forest learned the held-out strokes too
            if self.context is not None:  # planes only the teacher labels are sampled too: their channels, once
                for ix in self.indices + self.replay_indices:
                    self.context.add_planes(ix.data.image, [z for z in pseudo.get(id(ix), {}) if z is not None])
            elapsed += time.perf_counter() - t0
        self.teacher_active = pseudo is not None
        if self.cpu_share is not None:
            yield self._share_cpu()
        batches = _Prefetcher(
            self._make_sampler(pseudo), cfg.batch_size, cfg.augmentation, cfg.seed, cfg.input.in_channels
        )
        self._between.open()
        try:
            while True:
                t0 = time.perf_counter()
                if self._between.serve():
                    elapsed += time.perf_counter() - t0
                if self._stop.is_set():
                    reason = "stopped"
                    break
                if not self._running.is_set():
                    yield Paused(True)
                    while not self._running.wait(0.05):
                        self._between.serve()
                    yield Paused(False)
                    continue
                t0 = time.perf_counter()
                x, y = batches.get()
                self.optimizer.param_groups[0]["lr"] = scheduled_lr(
                    self.lr, cfg.lr_schedule, self._progress(elapsed), self.step, self.warmup
                )
                loss = self._train_step(x, y)
                elapsed += time.perf_counter() - t0
                self.step += 1
                progress = self._progress(elapsed)
                eta = None if progress is None or progress <= 0 else elapsed * (1 - progress) / progress
                yield TrainStep(self.step, loss, self.step * cfg.batch_size / elapsed, elapsed, eta, progress)
                done = progress is not None and progress >= 1
                # far past the time limit, the last steps go unvalidated (the best validated weights are kept)
                late = validated_at > 0 and self._over_time(elapsed, TIME_GRACE)
                if self.val_tiles and (self.step % cfg.validate_every == 0 or done) and not late:
                    t0 = time.perf_counter()
                    event = self._validate()
                    elapsed += time.perf_counter() - t0
                    validated_at = self.step
                    yield event
                    if self.cpu_share is not None and self.cpu_share.threads != self.cpu_share.update():
                        yield self._share_cpu(measured=True)
                    if event.improved and self.output is not None and self.step > 0:
                        yield self._save()
                    if cfg.patience and self.step - self.last_gain_step >= cfg.patience * cfg.validate_every:
                        reason = "early stopping"
                        break
                    done = done or self._over_time(elapsed)  # the validation used up the time
                if done:
                    reason = "steps" if cfg.steps is not None and self.step >= cfg.steps else "time"
                    break
        finally:
            self._between.close()
            batches.close()
        if (
            self.val_tiles
            and validated_at != self.step
            and self.step > 0
            and not (validated_at > 0 and self._over_time(elapsed, TIME_GRACE))
        ):
            t0 = time.perf_counter()
            event = self._validate()
            elapsed += time.perf_counter() - t0
            yield event
        # the halo measurement (and prior correction) get what is left of the time limit plus the grace
        deadline = (
            None
            if cfg.time_limit is None
            else time.perf_counter() + max(0.0, cfg.time_limit * (1 + TIME_GRACE) - elapsed)
        )
        if self.average is not None:  # from here on the result is one network: the average, or the best below
            with self._lock:
                self.model.load_state_dict(self.average.model.state_dict())
                self.average = None
        if self.best_state is not None:
            with self._lock:
                self.model.load_state_dict(self.best_state)
            self.health = self.best_health
        elif self.step > 0:
            if self.val_tiles:  # every validation saw a collapsed network: there is nothing to keep
                self.health = self.last_health
            else:  # no validation possible: the last weights are the result, judged on unlabeled windows
                self.best_step = self.step
                self.health = self._window_health()
        collapsed = self.health.collapsed if self.health is not None and self.step > 0 else None
        self.kept_parent = kept_parent = self.base_metadata is not None and self.best_step == 0 and self.step > 0
        if kept_parent:
            self.kept_parent_because = "it never beat the parent on the held-out labels"
        if collapsed is None and not kept_parent:
            if cfg.prior_correction and self.step > 0:
                self.correct_prior()
            if self.seen is not None and self.step > 0:
                self.seen_agreement = agreement = self.seen.agreement(self._judged)
                self.best_metrics["seen_agreement"] = agreement
                if agreement < 1 - cfg.seen_tolerance:
                    self.kept_parent = kept_parent = True
                    self.kept_parent_because = (
                        f"it changed {100 * (1 - agreement):.0f}% of the prediction left as "
                        "it was around the corrections"
                    )
            if cfg.measure_halo and self.step > 0 and not kept_parent:
                self.effective_halo = self._measure_halo(deadline)
                self.halo_skipped = self.effective_halo is None
        if kept_parent:
            self._restore_parent()
        if self.health is not None:
            self.best_metrics["health"] = self.health.to_dict(names)
        path = None
        if self.output is not None and self.step > 0 and collapsed is None:
            saved = self._save()
            path = saved.path
            yield saved
        self._between.finish()  # nothing computes any more: a call runs at once again
        yield TrainingFinished(
            reason,
            self.step,
            elapsed,
            self.best_step,
            dict(self.best_metrics),
            path,
            self.effective_halo,
            collapsed,
            self.health.warning if self.health is not None else None,
            kept_parent,
            self.kept_parent_because,
            self._prior_note() if collapsed is None and not kept_parent else None,
        )

    def _prior_note(self) -> str | None:
        """What the user is told of a class-prior correction not applied in full, or None."""
        if self.prior_refused is not None:
            return f"the class-prior correction was not applied: {self.prior_refused}"
        if self.prior_scaled is not None:
            return f"the class-prior correction was applied at {self.prior_scale:.0%}: {self.prior_scaled}"
        return None

    def _restore_parent(self) -> None:
        """The parent as it was saved (its prior correction included) is the result, with its figures and halo."""
        assert self.base_metadata is not None and self._parent_state is not None  # only a fine-tuning has a parent
        with self._lock:
            self.model.load_state_dict(self._parent_state)
        recorded = self.base_metadata.provenance.get("class_prior")
        self.class_prior = (
            [float(recorded[name]) for name in self.base_metadata.class_names]
            if self.parent_prior_undone is not None and recorded
            else None
        )
        self.prior_refused = self.prior_scaled = None  # the parent's correction, not this run's
        self.prior_scale = float(
            self.base_metadata.provenance.get("class_prior_scale", 1.0 if self.class_prior else 0.0)
        )
        self.effective_halo = self.base_metadata.effective_halo
        self.best_step, self.best_metrics = 0, dict(self._parent_metrics)
        if self._parent_health is not None:
            self.health = self._parent_health

    @property
    def _judged(self) -> torch.nn.Module:
        """The network that is validated, previewed and saved: the weight average while it runs, else the model."""
        return self.average.model if self.average is not None else self.model

    @property
    def collapsed(self) -> str | None:
        """After :meth:`run`: why no usable network came out (nothing saved), or None."""
        return self.health.collapsed if self.health is not None and self.step > 0 else None

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the current (after :meth:`run`: the best) model with its metadata, atomically."""
        with self._lock:
            return save_model(path, self._judged, self.metadata(), overwrite=overwrite)

    # -- internals -------------------------------------------------------------------------------
    def _pixels(self, which: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for ix in self.indices + self.replay_indices:
            for c, n in ix.count(which).items():
                out[c] = out.get(c, 0) + n
        return out

    def _make_sampler(self, pseudo: dict | None = None) -> PatchSampler:
        return PatchSampler(
            self.indices,
            self.config.input,
            self.patch_size,
            self.n_classes,
            self.normalization,
            seed=self.config.seed,
            replay=self.replay_indices,
            replay_fraction=self.config.replay_fraction,
            pseudo=pseudo,
            context=None if self.context is None else self.context.region,
        )

    def _share_cpu(self, measured: bool = False) -> CpuThreads:
        """Size the compute team of this (the training) thread to the cores other processes leave free."""
        share = self.cpu_share
        assert share is not None  # called only on the CPU, with the thread team sized to the free cores
        if not measured:
            share.update()
        torch.set_num_threads(share.threads)
        return CpuThreads(share.threads, share.cores, share.busy, share.describe())

    def _over_time(self, elapsed: float, grace: float = 0.0) -> bool:
        """Whether ``elapsed`` seconds reach the time limit plus ``grace`` (a share of it); False without a limit."""
        limit = self.config.time_limit
        return limit is not None and elapsed >= limit * (1 + grace)

    def _progress(self, elapsed: float) -> float | None:
        parts = []
        if self.config.steps is not None:
            parts.append(self.step / self.config.steps)
        if self.config.time_limit is not None:
            parts.append(elapsed / self.config.time_limit)
        return min(1.0, max(parts)) if parts else None

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        with self._lock, training_products(self.products or torch.float32):
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
                logits, scales = deep_supervision.outputs(self.model, x)  # scales: MUNet's, else none
                if self.teacher_active:  # targets K..2K-1 are the teacher's (training.teacher)
                    taught = y >= self.n_classes
                    loss = deep_supervision.supervised(self.loss_fn, logits, scales, y.masked_fill(taught, IGNORE))
                    if taught.any():
                        loss = loss + self.config.teacher_weight * torch.nn.functional.cross_entropy(
                            logits.float(), torch.where(taught, y - self.n_classes, IGNORE), ignore_index=IGNORE
                        )
                else:
                    loss = deep_supervision.supervised(self.loss_fn, logits, scales, y)
                if self.distill is not None:
                    loss = loss + self.distill.loss(logits, x, y)
                if self.edge_loss is not None:
                    loss = loss + self.edge_loss(logits, x)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # type: ignore[arg-type]  # GradScaler duck-types it (param_groups, step)
            self.scaler.update()
            if self.average is not None:
                self.average.update()
        return float(loss.detach())

    @torch.no_grad()
    def _evaluate_tiles(self) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """Confusion matrix and mean cross-entropy of the model on the held-out tiles, how many pixels of the tiles
        (labeled or not) it assigns to each class, and the confusion matrix of the replayed labels' tiles alone."""
        cm = np.zeros((self.n_classes, self.n_classes), np.int64)
        replay_cm = np.zeros_like(cm)
        predicted = np.zeros(self.n_classes, np.int64)
        loss_sum, loss_pixels = 0.0, 0
        with self._lock:
            model, was_training = self._judged, self._judged.training
            model.eval()
            try:
                for start in range(0, len(self.val_tiles), self.config.batch_size):
                    chunk = self.val_tiles[start : start + self.config.batch_size]
                    x = torch.from_numpy(np.stack([t[0] for t in chunk])).to(self.device)
                    y = torch.from_numpy(np.stack([t[1] for t in chunk])).to(self.device)
                    with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
                        logits = model(x).float()
                    loss_sum += float(
                        torch.nn.functional.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum")
                    )
                    loss_pixels += int((y != IGNORE).sum())
                    pred = logits.argmax(1).cpu().numpy()
                    predicted += np.bincount(pred.ravel(), minlength=self.n_classes)
                    for k, ((_, target), p) in enumerate(zip(chunk, pred), start):
                        tile_cm = seg_metrics.confusion_matrix(target + 1, p + 1, self.n_classes)
                        cm += tile_cm
                        if k >= self.replay_from:
                            replay_cm += tile_cm
            finally:
                model.train(was_training)
        return cm, loss_sum / max(loss_pixels, 1), predicted, replay_cm

    def _validate(self) -> Validated:
        """Score the held-out tiles; ties on the metric are broken by the lower validation loss. A collapsed
        network (see :mod:`.health`) never becomes the best, whatever its score."""
        cm, loss, predicted, replay_cm = self._evaluate_tiles()
        metrics = _metrics_from(cm, self.class_names)
        metrics["loss"] = loss
        self.last_health = health = net_health.check(
            predicted, sorted(self.counts), self.class_names, seg_metrics.recall(cm)
        )
        score = float(metrics[self.config.metric])
        usable = health.collapsed is None
        if self.replay_from < len(self.val_tiles):  # fine-tuning: the earlier labels' held-out part, judged apart
            remembered = seg_metrics.class_accuracy(replay_cm)
            metrics["replay_class_accuracy"] = remembered
            if self.parent_replay_accuracy is None:  # the first validation (step 0) is the parent's
                self.parent_replay_accuracy = remembered
            elif remembered < self.parent_replay_accuracy - FORGET_TOLERANCE:
                usable = False  # better on the new labels but forgets the earlier ones: not a better version
        if self.step == 0 and self.base_metadata is not None:  # the parent, as it stands before fine-tuning
            self._parent_metrics, self._parent_health = dict(metrics), health
        if score > self.best_score and usable:
            self.last_gain_step = self.step  # early stopping watches the metric alone
        improved = usable and (
            score > self.best_score or (score == self.best_score and metrics["loss"] < self.best_loss)
        )
        if improved:
            self.best_score, self.best_loss, self.best_step, self.best_metrics = (
                score,
                metrics["loss"],
                self.step,
                metrics,
            )
            self.best_health = health
            with self._lock:
                self.best_state = {k: v.detach().clone() for k, v in self._judged.state_dict().items()}
        return Validated(
            self.step,
            metrics,
            score,
            improved,
            int(self.best_step or 0),
            float(self.best_score) if self.best_step is not None else float("nan"),
            health.collapsed,
        )

    @torch.no_grad()
    def correct_prior(
        self, windows: int = 8, side: int = 256, max_loss: float | None = PRIOR_MAX_LOSS
    ) -> list[float] | None:
        """Estimate the class prior on random unlabeled windows of the training images and shift the
        output bias to it (strokes teach a uniform prior; see :mod:`.prior`). EM prior estimates trust
        the network's calibration: an undertrained network can be pushed too far, so where the full shift would
        all but erase a painted class from the windows (:func:`.prior.erased_classes`) only the largest tenth of it
        that erases none is applied (``prior_scale``, :func:`.prior.safe_scale`). The shift is undone (and None
        returned) when no tenth is safe, when the corrected network is collapsed on the held-out tiles (one class
        nearly everywhere while another's held-out pixels are missed, :mod:`.health`) or, with ``max_loss``, when it
        lowers the held-out class accuracy by more than that. Some loss is expected and right: held-out strokes are
        class-balanced, the image is not (see PRIOR_MAX_LOSS). ``prior_refused`` says why it was not applied,
        ``prior_scaled`` why only part of it was. Returns the prior the applied shift stands for."""
        probs = np.concatenate(self._window_probabilities(windows, side), axis=1)
        uniform = np.full(self.n_classes, 1.0 / self.n_classes)
        prior = estimate_prior(probs, uniform)
        before = seg_metrics.class_accuracy(self._evaluate_tiles()[0]) if self.val_tiles else None
        with self._lock:
            shift = shift_output_bias(self._judged, prior, uniform)
        painted = sorted(self.counts)
        erased = erased_classes(probs, shift, painted)
        scale = safe_scale(probs, shift, painted) if erased else 1.0
        self.prior_scale, self.prior_scaled, refused = scale, None, None
        if erased:
            names = ", ".join(self.class_names[c - 1] for c in erased)
            painted_words = f"{names}, which {'are' if len(erased) > 1 else 'is'} painted"
            if scale == 0:
                refused = f"it would all but erase {painted_words}, from the prediction"
            else:
                self.prior_scaled = f"the full correction would all but erase {painted_words}"
                self._add_to_output_bias((scale - 1) * shift)
        if refused is None and before is not None:
            cm, _, predicted, _ = self._evaluate_tiles()
            collapsed = net_health.check(predicted, painted, self.class_names, seg_metrics.recall(cm)).collapsed
            if collapsed is not None:
                refused = f"the corrected network would be collapsed: {collapsed}"
            elif max_loss is not None and seg_metrics.class_accuracy(cm) < before - max_loss:
                refused = f"it would cost more than {max_loss:.0%} class accuracy on the held-out labels"
        self.prior_refused = refused
        if refused is not None:  # the network is not calibrated: the shift does more harm than good
            self._add_to_output_bias(-(scale or 1.0) * shift)  # the share the bias holds: all of it where none was safe
            self.class_prior, self.prior_scale, self.prior_scaled = None, 0.0, None
            return None
        self.class_prior = [float(p) for p in (prior if scale == 1 else scaled_prior(scale * shift, uniform))]
        return self.class_prior

    def _add_to_output_bias(self, delta: np.ndarray) -> None:
        with self._lock, torch.no_grad():
            bias: torch.Tensor = output_bias(self._judged)  # a Parameter, shifted in place
            bias += torch.as_tensor(delta, dtype=bias.dtype, device=bias.device)

    @torch.no_grad()
    def _window_probabilities(self, windows: int = 8, side: int = 256) -> list[np.ndarray]:
        """Class probabilities ``(K, pixels)`` of the network on random windows of the training images."""
        rng = np.random.default_rng(self.config.seed)
        spec = self.config.input
        probs = []
        with self._lock:
            model, was_training = self._judged, self._judged.training
            model.eval()
            try:
                for k in range(windows):
                    image = self.data[k % len(self.data)].image
                    center = [int(rng.integers(n)) for n in image.shape]
                    if spec.mode == "3d":
                        size = self.patch_size
                    else:
                        (a, b), _ = plane_axes(len(image.shape), "xy")
                        size = (min(side, image.shape[a]), min(side, image.shape[b]))
                    context = None if self.context is None else self.context.region
                    x, _ = network_input(image, spec, self.normalization, center, size, "xy", context)
                    logits = model(torch.from_numpy(x)[None].to(self.device)).float()
                    probs.append(torch.softmax(logits, 1)[0].reshape(self.n_classes, -1).cpu().numpy())
            finally:
                model.train(was_training)
        return probs

    def _window_health(self) -> net_health.Health:
        predicted = np.zeros(self.n_classes, np.int64)
        for p in self._window_probabilities(windows=4):
            predicted += np.bincount(p.argmax(0), minlength=self.n_classes)
        return net_health.check(predicted, sorted(self.counts), self.class_names)

    def _measure_halo(self, deadline: float | None = None) -> int | None:
        """The context the trained network really needs at tile borders (see inference.halo); None when the
        measurement reaches ``deadline`` (a ``time.perf_counter()`` value), checked before each predicted block."""
        model = self.snapshot().to(self.device)
        predictor = Predictor(model, self.metadata(), self.device, self.config.batch_size)
        return inference_halo.measure_effective_halo(predictor, self.data[0].image, deadline=deadline)

    def _save(self) -> Saved:
        assert self.output is not None  # run() saves only when given an output
        self.save(self.output, overwrite=True)  # our own output: checked not to pre-exist in __init__
        return Saved(str(self.output), self.step)

    def _provenance(self) -> dict[str, Any]:
        prov: dict[str, Any] = {
            "trained_with": f"napari-msd {__version__}",
            "data": [{"name": d.name, "shape": list(d.image.shape), "dtype": str(d.image.dtype)} for d in self.data],
            "steps": self.step,
            "best_step": self.best_step,
            "metrics": self.best_metrics,
            "labeled_pixels": {
                self.class_names[c - 1]: n for c, n in sorted(self.counts.items()) if c <= len(self.class_names)
            },
            "device": describe_device(self.device),
            "seed": self.config.seed,
            "patch_size": list(self.patch_size),
        }
        if self.products == torch.bfloat16:
            prov["precision"] = "MS-D products and maps in bfloat16, weights and gradients in float32"
        if self.halo_skipped:
            prov["halo"] = "not measured: the time limit was reached; prediction uses the receptive field"
        if self.pretrained is not None:
            prov["pretrained"] = {
                "method": "blind-spot masked reconstruction (training.pretrain)",
                "steps": self.pretrained.steps,
                "seconds": round(self.pretrained.seconds, 1),
                "file": Path(str(self.config.pretrained)).name,
            }
        if self.context is not None:
            forest = self.context.forest
            prov["forest_channels"] = {
                "trees": len(forest.trees),
                "classes": [self.class_names[c - 1] for c in forest.classes_present if c <= len(self.class_names)],
                "out_of_fold_forests": self.context.folds,
                "in_sample_planes": self.context.in_sample,
                "seconds": round(self.context_seconds, 1),
            }
        if self.teacher_active:
            prov["teacher"] = {
                "kind": "random forest",
                "weight": self.config.teacher_weight,
                "confidence": self.config.teacher_confidence,
                "unpainted_planes": self.config.teacher_planes,
            }
        if self.distill is not None:
            prov["teacher"] = {"kind": "parent network", "weight": self.distill.weight}
        if self.class_prior is not None:
            prov["class_prior"] = dict(zip(self.class_names, self.class_prior))
            if self.prior_scale < 1:
                prov["class_prior_scale"] = self.prior_scale
        elif self.prior_refused is not None:
            prov["class_prior_refused"] = self.prior_refused
        if self.base_metadata is not None:
            prov.update(fine_tuning_provenance(self.init_source, self.base_metadata, self.replay))
        return prov


def _metrics_from(cm: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    ious = seg_metrics.iou(cm)
    return {
        "global_accuracy": float(seg_metrics.global_accuracy(cm)),
        "class_accuracy": float(seg_metrics.class_accuracy(cm)),
        "mean_iou": float(np.nanmean(ious)) if np.isfinite(ious).any() else 0.0,
        "iou": {name: (None if math.isnan(v) else float(v)) for name, v in zip(class_names, ious)},
        "pixels": int(cm.sum()),
    }


class _Prefetcher:
    """Cuts and augments batches on one background thread while the network trains."""

    def __init__(
        self,
        sampler: PatchSampler,
        batch_size: int,
        augmentation: Augmentation,
        seed: int,
        image_channels: int | None = None,
        depth: int = 3,
    ):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._work,
            args=(sampler, batch_size, augmentation, seed, image_channels),
            name="napari-msd-patches",
            daemon=True,
        )
        self._thread.start()

    def _work(
        self, sampler: PatchSampler, batch_size: int, augmentation: Augmentation, seed: int, image_channels: int | None
    ) -> None:
        # One intra-op thread here (the setting is per thread with OpenMP): torch ops on this thread otherwise
        # start a second team of compute threads that competes with the training step's and halved its speed
        # on 2 cores (intensity jitter: 0.95 vs 1.9 steps/s for the paper MS-D). With another backend the
        # setting would be process-wide, so it is left alone there.
        if _OPENMP:
            torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(seed)
        try:
            while not self._closed.is_set():
                x, y = sampler.sample(batch_size)
                item = augmentation(torch.from_numpy(x), torch.from_numpy(y), generator, image_channels)
                self._put(item)
        except BaseException as err:  # hand the error to the training thread
            self._put(err)

    def _put(self, item: Any) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)


__all__ = ["PRESETS", "TrainConfig", "Trainer"]
