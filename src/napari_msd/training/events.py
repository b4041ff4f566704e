"""Small typed records the training engine yields; the GUI and the CLI only render them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainingStarted:
    device: str
    n_parameters: int
    patch_size: tuple[int, ...]
    class_names: list[str]
    train_pixels: dict[str, int]  # class name -> labeled pixels used for training
    val_pixels: dict[str, int]  # class name -> held-out pixels (empty: validation is off)
    fine_tuning: bool = False
    forest_channels: int = 0  # input channels of a forest's class probabilities beside the image (training.context)
    products: str = ""  # "float32" or "bfloat16": MS-D's matrix products in training steps; empty for other networks


@dataclass(frozen=True)
class CpuThreads:
    """The compute threads training uses on the CPU, at the start and whenever other processes' load changes it."""

    threads: int
    cores: int
    busy: float  # cores kept busy by other processes
    text: str  # for people, e.g. "1 thread: other processes keep 1.0 of 2 cores busy"


@dataclass(frozen=True)
class TrainStep:
    step: int
    loss: float
    samples_per_s: float
    elapsed: float  # seconds of the run: steps, validations and work between steps (previews); pauses excluded
    eta: float | None  # seconds left, when steps or a time limit bound the run
    progress: float | None  # 0..1, likewise


@dataclass(frozen=True)
class Validated:
    step: int
    metrics: dict[str, float | list[float]]
    score: float  # the metric early stopping watches
    improved: bool
    best_step: int
    best_score: float
    collapsed: str | None = None  # why these weights are unusable (never kept as the best), or None


@dataclass(frozen=True)
class Paused:
    paused: bool  # True when training paused, False when it resumed


@dataclass(frozen=True)
class Saved:
    path: str
    step: int


@dataclass(frozen=True)
class TrainingFinished:
    reason: str  # "steps", "time", "early stopping" or "stopped"
    steps: int
    elapsed: float
    best_step: int | None
    best_metrics: dict = field(default_factory=dict)
    path: str | None = None
    effective_halo: int | None = None  # measured context in pixels, stored with the model
    collapsed: str | None = None  # set when no usable network came out: nothing was saved or kept
    warning: str | None = None  # what a person should know about the kept network
    kept_parent: bool = False  # fine-tuning gave no better network: the parent's weights are kept
    kept_parent_because: str | None = None  # why, in words ("it never beat the parent on the held-out labels")
    note: str | None = None  # a step of the run left out or cut short, and why (the class-prior correction), in words


# -- an ensemble's training (training.ensemble): its members are trained one after another ---------------------------
@dataclass(frozen=True)
class MemberStarted:
    """Member ``member`` (0-based) of ``n_members`` starts training (``fine_tuning``: from its own earlier weights)."""

    member: int
    n_members: int
    arch: str
    seed: int
    fine_tuning: bool = False


@dataclass(frozen=True)
class MemberEvent:
    """One event of a member's training (any record above, its own ``TrainingFinished`` included), tagged with it."""

    member: int
    n_members: int
    event: object


@dataclass(frozen=True)
class MemberFinished:
    """Member ``member`` is done: ``kept`` in the ensemble or left out, ``why`` in words when left out or when it
    keeps its earlier weights (a retraining that gave no better member)."""

    member: int
    n_members: int
    kept: bool
    steps: int
    why: str | None = None
    kept_parent: bool = False
