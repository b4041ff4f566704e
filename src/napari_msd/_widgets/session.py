"""State shared by the napari-msd docks of one viewer: a plain object with psygnal signals, no Qt.

The Model dock sets the network to train (architecture, input mode, classes) and shows the model
versions; the Train dock adds versions; the Predict dock predicts with the current version and
remembers each prediction as predicted, so the user's edits can be told apart and used as corrections.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from napari_msd.base.inputs import InputSpec
from napari_msd.training.versions import ModelVersions

_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()
IN_MEMORY_LIMIT = 2**30  # scratch arrays above this many bytes live in a zarr store on disk


@dataclass
class PredictionRecord:
    """A prediction layer's origin: the labels as predicted (to find the user's edits), the image layer it was
    predicted from, the model version, and the uncertainty scores of its regions (``RegionScores`` or None)."""

    predicted: Any
    image_name: str
    version: str
    scores: Any = None


class Session:
    """The current network settings, model versions and predictions of a viewer's docks.

    ``arch`` and ``model_config`` rebuild a new network (``napari_msd.models.build_model``); ``input_spec``
    says how it is fed; ``class_names[i]`` / ``class_colors[i]`` describe label ``i + 1``. ``versions`` holds
    the trained models, ``versions.current`` is used by prediction and retraining. ``training_layers`` is
    the (image, labels) pair the Train dock uses, by layer name.
    """

    versions_changed = Signal()  # a version was added or the current one changed
    classes_changed = Signal()

    def __init__(self) -> None:
        self.arch = "msd"
        self.model_config: dict[str, Any] = {}
        self.input_spec = InputSpec()
        self.class_names: list[str] = []
        self.class_colors: list[str] = []
        self.versions = ModelVersions()
        self.predictions: weakref.WeakKeyDictionary[Any, PredictionRecord] = weakref.WeakKeyDictionary()
        self.training_layers: tuple[str, str] | None = None
        self._workspace: Path | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def model_path(self) -> Path | None:
        """The file of the current version, if it was loaded from or saved to one."""
        current = self.versions.current
        return None if current is None else current.path

    def build_model(self, device: str = "cpu"):
        """A fresh (untrained) network of the current architecture."""
        from napari_msd.models import build_model

        return build_model(self.arch, self.model_config).to(device)

    def set_classes(self, names: list[str], colors: list[str] | None = None) -> None:
        self.class_names = list(names)
        self.class_colors = list(colors or [])
        self.classes_changed.emit()

    # -- scratch arrays for predictions and label snapshots ----------------------------------------
    @property
    def workspace(self) -> Path:
        """A temporary folder for on-disk scratch arrays, removed when the session is dropped."""
        if self._workspace is None:
            self._workspace = Path(tempfile.mkdtemp(prefix="napari-msd-"))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._workspace, True)
        return self._workspace

    def scratch(self, shape: tuple[int, ...], dtype: Any, like: Any = None, fill: int = 0) -> Any:
        """A writable array of ``shape``: numpy when ``like`` is a numpy array or it is small, else a chunked
        zarr array on disk (so predictions of volumes far larger than memory stream into it)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if isinstance(like, np.ndarray) or (like is None and nbytes <= IN_MEMORY_LIMIT):
            return np.full(shape, fill, dtype)
        import zarr

        chunks = tuple([1] * (len(shape) - 2) + [min(1024, n) for n in shape[-2:]])
        path = tempfile.mkdtemp(prefix="array-", suffix=".zarr", dir=self.workspace)
        return zarr.create_array(store=path, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, overwrite=True)

    def close(self) -> None:
        """Drop scratch arrays now (also done when the session is garbage collected)."""
        if self._finalizer is not None:
            self._finalizer()


def layer_classes(layer: Any, n: int) -> tuple[list[str], list[str]]:
    """Names and hex colours of classes ``1..n`` of a labels layer, from ``metadata["class_names"]`` (int or str
    keys) and its colormap; colours are ``[]`` unless every class has one."""
    named = layer.metadata.get("class_names") or {}
    names = [str(named.get(i, named.get(str(i), f"class {i}"))) for i in range(1, n + 1)]
    color_dict = getattr(layer.colormap, "color_dict", {})
    colors = [color_dict.get(i) for i in range(1, n + 1)]
    return names, [_hex(c) for c in colors] if all(c is not None for c in colors) else []


def _hex(color: Any) -> str:
    rgb = np.clip(np.round(np.asarray(color, dtype=float)[:3] * 255), 0, 255).astype(int)
    return "#" + "".join(f"{v:02x}" for v in rgb)


def get_session(viewer: Any) -> Session:
    """The session shared by all docks of ``viewer`` (created on first use, dropped with the viewer)."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    try:
        return _SESSIONS[viewer]
    except KeyError:
        from napari_msd._reader import remember_reader_for_outputs

        from .workers import keep_torch_off_the_main_thread

        remember_reader_for_outputs()  # outputs the docks write (*.msd.zarr) then open without a reader choice
        keep_torch_off_the_main_thread()  # before any dock builds a network there
        return _SESSIONS.setdefault(viewer, Session())
