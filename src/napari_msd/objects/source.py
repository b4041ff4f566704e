"""What objects are computed from and written to: a prediction (a batch output or any labels image) and
zarr stores for instance labels. Both open lazily; nothing here reads a volume whole."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NapariMsdError, one_line
from .blocks import OutputFactory
from .scale import ZARR_SEPARATOR, Scale, ome_scale

ATTRS_KEY = "napari_msd"  # batch outputs record their job here; instances stores {"kind": "instances"}


class SourceError(NapariMsdError):
    """A prediction or an instances store cannot be used as asked; one line saying what to do."""


class Channel:
    """One channel of a ``(C, *shape)`` array as a lazy ``shape`` array (each read reads that channel only)."""

    def __init__(self, array: Any, channel: int) -> None:
        self.array = array
        self.channel = int(channel)
        self.shape = tuple(int(s) for s in array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        chunks = getattr(array, "chunks", None)
        self.chunks = tuple(chunks[1:]) if chunks is not None and len(chunks) == len(array.shape) else None

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        return self.array[(self.channel, *key)]


@dataclass
class Prediction:
    """A semantic prediction opened lazily: ``labels`` (0 = none, 1..K), ``class_names`` (class k is
    ``class_names[k - 1]``; empty when unknown), ``probabilities`` ((K, *shape) or ``None``), the pixel
    ``scale`` from OME-Zarr metadata (``None`` when there is none) and ``missing_blocks`` of an unfinished
    batch output (their pixels read as 0)."""

    spec: str
    labels: Any
    class_names: list[str] = field(default_factory=list)
    probabilities: Any = None
    scale: Scale | None = None
    missing_blocks: int = 0

    def class_ids(self, names: Sequence[str]) -> list[int]:
        """The class numbers of ``names`` (class names, or numbers 1..K); one-line error naming the known ones."""
        ids = []
        for name in names:
            text = str(name).strip()
            if text in self.class_names:
                ids.append(self.class_names.index(text) + 1)
            elif text.isdigit() and int(text) >= 1 and (not self.class_names or int(text) <= len(self.class_names)):
                ids.append(int(text))
            else:
                known = ", ".join(self.class_names) if self.class_names else "none stored: give class numbers 1, 2, ..."
                raise SourceError(f"{self.spec} has no class {text!r}; known classes: {known}")
        return ids

    def probability(self, name: str) -> Channel:
        """The probability map of class ``name`` (lazy)."""
        (k,) = self.class_ids([name])
        if self.probabilities is None:
            raise SourceError(
                f"{self.spec} holds no probabilities, so it has no boundary map of {name!r}; predict with "
                "--probabilities, or split by the distance transform (leave out the boundary class)"
            )
        return Channel(self.probabilities, k - 1)


def open_prediction(spec: str | os.PathLike[str]) -> Prediction:
    """A napari-msd batch output (class names from its job), or any labels image napari-msd's readers open
    (TIFF, zarr, OME-Zarr, MRC, .npy; class names from a zarr array's ``class_names`` attribute)."""
    from ..io import ImageReadError, OutputError, open_output, read_labels

    text = os.fspath(spec)
    path = Path(os.path.expanduser(text))
    if ZARR_SEPARATOR not in text and _is_batch_output(path):
        try:
            output = open_output(path, writable=False)
            labels = output.open_labels()
            probabilities = output.open_probabilities() if output.job.probabilities != "none" else None
            missing = len(output.missing())
        except OutputError as err:
            raise SourceError(str(err)) from None
        return Prediction(text, labels, list(output.job.class_names), probabilities, None, missing)
    try:
        labels = read_labels(text)
    except ImageReadError as err:
        raise SourceError(str(err)) from None
    names = dict(getattr(getattr(labels, "source", None), "attrs", {}) or {}).get("class_names")
    names = [str(n) for n in names] if isinstance(names, list) else []
    return Prediction(text, labels, names, None, ome_scale(text, labels.ndim))


def _is_batch_output(path: Path) -> bool:
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    record = meta.get("attributes", {}).get(ATTRS_KEY) if isinstance(meta, dict) else None
    return isinstance(record, dict) and "layout" in record


def instances_store(
    path: str | os.PathLike[str],
    *,
    chunks: Sequence[int],
    overwrite: bool = False,
    attributes: dict[str, Any] | None = None,
) -> OutputFactory:
    """A factory ``(shape, dtype) -> zarr array`` creating a zarr v3 array of instance labels at ``path``.

    Checked now, created when called: an existing path is refused unless ``overwrite`` and it is an
    instances store written by napari-msd (nothing else is ever deleted).
    """
    target = Path(os.path.expanduser(os.fspath(path)))
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise SourceError(f"{target} already exists; pass --overwrite to replace it or choose another output")
        if not _is_instances_store(target):
            raise SourceError(
                f"{target} exists and is not an instances store written by napari-msd; choose another output or "
                "remove it yourself (--overwrite only replaces napari-msd's instances)"
            )
    if not target.parent.is_dir():
        raise SourceError(f"output folder {target.parent} does not exist; create it first or choose another output")
    chunk_shape = tuple(int(c) for c in chunks)
    record: dict[str, Any] = {ATTRS_KEY: {"kind": "instances", **(attributes or {})}}

    def create(shape: tuple[int, ...], dtype: np.dtype) -> Any:
        import zarr

        try:
            if target.exists():
                shutil.rmtree(target)
            return zarr.create_array(
                store=str(target),
                shape=shape,
                chunks=tuple(min(c, s) for c, s in zip(chunk_shape, shape)),
                dtype=dtype,
                fill_value=0,
                dimension_names=("z", "y", "x")[-len(shape) :],
                attributes=record,
                zarr_format=3,
            )
        except OSError as err:
            raise SourceError(f"cannot create {target} ({one_line(err)}); choose a writable location") from None

    return create


def _is_instances_store(path: Path) -> bool:
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    record = meta.get("attributes", {}).get(ATTRS_KEY) if isinstance(meta, dict) else None
    return isinstance(record, dict) and record.get("kind") == "instances" and not path.is_symlink()
