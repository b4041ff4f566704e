"""Model versions of an interactive session: v1 from the first training, v2 from retraining with corrections, ...

Each :class:`ModelVersion` keeps the network (CPU, eval mode), its metadata, the validation metrics it reached,
what it was fine-tuned from, and the labels it was trained on (snapshots, so a later retraining can replay
them and tell which labels are new). :class:`ModelVersions` lists them, selects the current one, saves one
to a model file and loads model files as versions. No napari, no Qt.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io.model_file import ModelMetadata, load_model, save_model
from .sampling import TrainingData

SUMMARY_METRICS = {"global_accuracy": "accuracy", "class_accuracy": "class accuracy", "mean_iou": "mean IoU"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class ModelVersion:
    """One trained network; ``trained_on`` are label snapshots (``TrainingData.name`` = the labels' name)."""

    name: str
    model: torch.nn.Module
    metadata: ModelMetadata
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    trained_on: list[TrainingData] = field(default_factory=list)
    path: Path | None = None
    steps: int = 0

    def describe(self) -> str:
        """One line: name, headline validation metrics and origin, e.g.
        ``v2 · accuracy 0.941 · mean IoU 0.712 · fine-tuned from v1 · 200 steps``."""
        parts = [self.name]
        for key, label in SUMMARY_METRICS.items():
            value = self.metrics.get(key)
            if _number(value):
                parts.append(f"{label} {value:.3f}" if len(parts) > 1 else f"held-out strokes: {label} {value:.3f}")
        if not any(_number(self.metrics.get(k)) for k in SUMMARY_METRICS):
            parts.append("not validated")
        if self.parent:
            parts.append(f"fine-tuned from {self.parent}")
        if self.steps:
            parts.append(f"{self.steps} steps")
        if self.path is not None:
            parts.append(self.path.name)
        return " · ".join(parts)


class ModelVersions:
    """The versions of one session in creation order; ``current`` is the one predictions and retraining use."""

    def __init__(self) -> None:
        self._items: list[ModelVersion] = []
        self._current: ModelVersion | None = None

    def __iter__(self) -> Iterator[ModelVersion]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def current(self) -> ModelVersion | None:
        return self._current

    def names(self) -> list[str]:
        return [v.name for v in self._items]

    def get(self, name: str) -> ModelVersion:
        for version in self._items:
            if version.name == name:
                return version
        raise KeyError(f"no model version {name!r}; versions: {', '.join(self.names()) or 'none yet'}")

    def add(
        self,
        model: torch.nn.Module,
        metadata: ModelMetadata,
        *,
        metrics: dict[str, Any] | None = None,
        parent: str | None = None,
        trained_on: list[TrainingData] | None = None,
        path: Path | None = None,
        steps: int = 0,
    ) -> ModelVersion:
        """Append a new version ``v<n>`` (a private CPU copy of ``model``) and make it current."""
        twin = copy.deepcopy(model).to("cpu").eval()
        version = ModelVersion(
            f"v{len(self._items) + 1}",
            twin,
            copy.deepcopy(metadata),
            dict(metrics or {}),
            parent,
            list(trained_on or []),
            path,
            steps,
        )
        self._items.append(version)
        self._current = version
        return version

    def select(self, name: str) -> ModelVersion:
        self._current = self.get(name)
        return self._current

    def save(self, name: str, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write version ``name`` to a model file (atomically; an existing file only with ``overwrite``)."""
        version = self.get(name)
        written = save_model(path, version.model, version.metadata, overwrite=overwrite)
        version.path = Path(written)
        return version.path

    def load(self, path: str | os.PathLike[str]) -> ModelVersion:
        """Add the model file at ``path`` as a new current version (no label snapshots: nothing to replay)."""
        model, metadata = load_model(path)
        metrics = (metadata.provenance or {}).get("metrics") or {}
        return self.add(model, metadata, metrics=metrics if isinstance(metrics, dict) else {}, path=Path(path))
