"""The prediction job: :class:`JobSpec`, everything that identifies one prediction (no napari, no Qt).

A job names the model, the input, the block grid and what is written; a store is resumed only by an equal
job, and :func:`job_difference` says in words how two stored jobs differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..base.labels import labels_dtype

PROBABILITY_KINDS = ("none", "uint8", "float16")
OUTPUT_FORMATS = ("zarr", "ome-zarr")
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass
class JobSpec:
    """Everything that identifies a prediction job; a store is resumed only by an equal job.

    ``model_sha256`` is the model file's SHA-256 (or the checksum stored in it), ``input`` the input spec
    string, ``halo`` an int or one int per axis, ``probabilities`` ``"none"``, ``"uint8"`` or ``"float16"``,
    ``labels`` whether the argmax labels are written, ``options`` any other setting that changes the
    prediction (e.g. test-time augmentation), compared like the rest.
    """

    model_sha256: str
    input: str
    input_shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    n_classes: int
    halo: tuple[int, ...] | int = 0
    class_names: list[str] = field(default_factory=list)
    class_colors: list[str] = field(default_factory=list)
    probabilities: str = "none"
    labels: bool = True
    output_format: str = "zarr"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model_sha256, str) or not self.model_sha256:
            raise ValueError(f"model_sha256 must be a non-empty string, got {self.model_sha256!r}")
        if not isinstance(self.input, str):
            raise ValueError(f"input must be the input spec string, got {type(self.input).__name__}")
        self.input_shape = _int_tuple(self.input_shape, "input_shape", minimum=1)
        ndim = len(self.input_shape)
        if ndim not in (2, 3):
            raise ValueError(f"input_shape must be YX or ZYX, got {self.input_shape}")
        self.block_shape = _int_tuple(self.block_shape, "block_shape", minimum=1)
        halo = (self.halo,) * ndim if isinstance(self.halo, int) and not isinstance(self.halo, bool) else self.halo
        self.halo = _int_tuple(halo, "halo", minimum=0)
        for name in ("block_shape", "halo"):
            if len(getattr(self, name)) != ndim:
                raise ValueError(f"{name} {getattr(self, name)} must have one entry per axis of {self.input_shape}")
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or not 1 <= self.n_classes < 65536:
            raise ValueError(f"n_classes must be an integer from 1 to 65535, got {self.n_classes!r}")
        self.class_names = list(self.class_names) or [f"class {i + 1}" for i in range(self.n_classes)]
        if len(self.class_names) != self.n_classes or not all(isinstance(n, str) for n in self.class_names):
            raise ValueError(f"class_names must be {self.n_classes} strings, got {self.class_names!r}")
        if not self.class_colors:
            from .model_file import default_class_colors  # lazily: model_file imports torch

            self.class_colors = default_class_colors(self.n_classes)
        self.class_colors = [c.lower() if isinstance(c, str) else c for c in self.class_colors]
        if len(self.class_colors) != self.n_classes or not all(
            isinstance(c, str) and _HEX_COLOR.match(c) for c in self.class_colors
        ):
            raise ValueError(
                f"class_colors must be {self.n_classes} hex strings like '#ff0000', got {self.class_colors!r}"
            )
        if self.probabilities not in PROBABILITY_KINDS:
            raise ValueError(f"probabilities must be one of {PROBABILITY_KINDS}, got {self.probabilities!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        self.labels = bool(self.labels)
        if not self.labels and self.probabilities == "none":
            raise ValueError("a job must write labels, probabilities or both")
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict, got {type(self.options).__name__}")
        json.dumps(self.options)  # must be JSON-ready (TypeError otherwise)

    @property
    def ndim(self) -> int:
        return len(self.input_shape)

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of blocks along each axis."""
        return tuple(-(-s // b) for s, b in zip(self.input_shape, self.block_shape))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.grid)

    @property
    def labels_dtype(self) -> np.dtype:
        return labels_dtype(self.n_classes)

    @property
    def probabilities_dtype(self) -> np.dtype | None:
        return None if self.probabilities == "none" else np.dtype(self.probabilities)

    def block_slices(self, block_index: tuple[int, ...]) -> tuple[slice, ...]:
        """The output region of one block (the last block along an axis may be shorter)."""
        index = tuple(int(i) for i in block_index)
        if len(index) != self.ndim or any(not 0 <= i < n for i, n in zip(index, self.grid)):
            raise ValueError(f"block index {tuple(block_index)} is outside the block grid {self.grid}")
        return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, self.block_shape, self.input_shape))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready copy (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing required ones raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"a job must be a JSON object, got {type(data).__name__}")
        fields = dataclasses.fields(cls)
        missing = [
            f.name
            for f in fields
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"job lacks {', '.join(missing)}")
        names = {f.name for f in fields}
        return cls(**{k: v for k, v in data.items() if k in names})


def spatial_names(job: JobSpec) -> tuple[str, ...]:
    """Dimension names of the job's spatial axes: ``("y", "x")`` or ``("z", "y", "x")``."""
    return ("z", "y", "x")[-job.ndim :]


def job_difference(stored: Any, wanted: dict[str, Any]) -> str:
    """How a stored job record differs from the wanted job's :meth:`JobSpec.to_dict`, in a few words."""
    if not isinstance(stored, dict):
        return "an unfinished or unreadable job record"
    keys = [k for k in wanted if stored.get(k) != wanted[k]] + [k for k in stored if k not in wanted]
    labels = {"model_sha256": "another model", "input": "another input", "input_shape": "another input shape"}
    parts = [labels.get(k, f"different {k}") for k in keys]
    return ", ".join(parts[:4]) + (", ..." if len(parts) > 4 else "") if parts else "another job"


def _int_tuple(value: Any, name: str, *, minimum: int) -> tuple[int, ...]:
    try:
        out = tuple(operator.index(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}") from None
    if any(v < minimum for v in out):
        raise ValueError(f"{name} entries must be at least {minimum}, got {out}")
    return out
