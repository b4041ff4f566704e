"""What a retraining learns from: the labels changed since the parent was trained, and the earlier ones replayed.

A version remembers the label snapshots it was trained on (``ModelVersion.trained_on``). Retraining it on the
labels as they are now splits the snapshot of the same labels layer into the pixels painted or repainted since
(the data the fine-tuning focuses on) and the unchanged ones (replayed, so the earlier annotations are not
forgotten); snapshots of other labels layers are replayed whole. The Train dock's Retrain and the stroke
benchmark's simulated proofreading both assemble their runs here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .corrections import split_since
from .sampling import TrainingData, TrainingDataError

Scratch = Callable[[tuple[int, ...], Any], Any]  # (shape, dtype) -> a zeroed array (numpy, or zarr for big labels)


@dataclass
class RetrainingData:
    """The run's ``data`` and ``replay`` (for :class:`~napari_msd.training.engine.Trainer`), and what the new
    version is ``trained_on`` (the labels now, and the other layers' earlier snapshots)."""

    data: list[TrainingData]
    replay: list[TrainingData] = field(default_factory=list)
    trained_on: list[TrainingData] = field(default_factory=list)
    new_pixels: int = 0
    replayed_pixels: int = 0


def retraining_data(
    image: Any, labels: Any, name: str, earlier: Sequence[TrainingData], scratch: Scratch, parent: str = "the model"
) -> RetrainingData:
    """Split ``labels`` (a snapshot of the layer ``name``, painted on ``image``) against the parent's ``earlier``
    snapshots (``parent`` names it in the error). Without an earlier snapshot of the same layer (and shape), every
    label is new.

    Raises :class:`TrainingDataError` when the layer was trained on before and no label changed since.
    """
    current = TrainingData(image, labels, name)
    shape = tuple(labels.shape)
    same = [e for e in earlier if e.name == name and tuple(e.labels.shape) == shape]
    others = [e for e in earlier if not (e.name == name and tuple(e.labels.shape) == shape)]
    if not same:
        return RetrainingData([current], list(others), [current, *others])
    new, kept = scratch(shape, labels.dtype), scratch(shape, labels.dtype)
    n_new, n_kept = split_since(labels, same[-1].labels, new, kept)
    if n_new == 0:
        raise TrainingDataError(
            f"no label changed in '{name}' since {parent} was trained; paint strokes or use corrections, then retrain"
        )
    replay = [TrainingData(image, kept, name)] if n_kept else []
    return RetrainingData(
        [TrainingData(image, new, f"{name} (new)")], [*replay, *others], [current, *others], n_new, n_kept
    )
