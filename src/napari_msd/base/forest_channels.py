"""A fitted random forest over filter features (:mod:`.features`): class probabilities of any plane or region, as a
first answer, as a teacher, and as extra input channels of a network (auto-context: Tu & Bai 2010; ilastik's
autocontext workflow). The network then learns from the strokes where the forest is right, with the context of the
whole patch, instead of learning the filters from scratch.

The trees are scikit-learn's (``sklearn.tree._tree.Tree``), kept as such: a forest fitted in this session predicts with
its own trees, a forest read from a model file with trees rebuilt from the network's buffers
(:class:`napari_msd.models.forest_buffers.ForestBuffers`), node for node, so both give the same probabilities.
Trees predict in parallel threads (scikit-learn's tree traversal releases the GIL) and are averaged in a fixed order.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..models.forest_buffers import ForestBuffers
from .device import cpu_threads
from .features import CONTEXT, SIGMAS, filter_features

RECENT_BOXES = 4  # boxes whose channels a forest remembers


def read_plane(image: Any, z: int | None, rows: slice, cols: slice) -> np.ndarray:
    """One 2D box of a YX or ZYX (possibly lazy) image, read as numpy (with slices only: views of an image that
    take nothing else work too)."""
    if len(image.shape) == 2 or z is None:
        return np.asarray(image[rows, cols])
    return np.asarray(image[slice(z, z + 1), rows, cols])[0]


def _node_dtype() -> np.dtype:
    """The installed scikit-learn's node record (its fields change between versions)."""
    from sklearn.tree._tree import Tree

    return Tree(1, np.array([2], dtype=np.intp), 1).__getstate__()["nodes"].dtype


class FittedForest:
    """Class probabilities ``1..n_classes`` from a forest's ``trees`` over ``n_features`` filter features at
    ``sigmas``; ``classes``: the classes the trees predict, in the order of their outputs (the others get 0).
    Planes larger than ``tile_pixels`` are predicted in row bands with exact context."""

    def __init__(
        self,
        trees: Sequence[Any],
        classes: Sequence[int],
        n_classes: int,
        sigmas: tuple[float, ...] = SIGMAS,
        tile_pixels: int = 2**22,
        threads: int | None = None,
    ):
        if not trees:
            raise ValueError("a forest needs at least one tree")
        self.trees = list(trees)
        self.classes_present = tuple(int(c) for c in classes)
        self.n_classes = int(n_classes)
        self.sigmas = tuple(sigmas)
        self.tile_pixels = int(tile_pixels)
        self.threads = threads
        self._recent: list[tuple[Any, tuple, np.ndarray]] = []  # (weak reference to the image, box, channels)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_recent": []}  # remembered boxes stay behind
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def n_features(self) -> int:
        return int(self.trees[0].n_features)

    # -- prediction ----------------------------------------------------------------------------------------------------
    def _proba(self, feats: np.ndarray) -> np.ndarray:
        """``(n_classes, h, w)`` float32 probabilities from ``(h, w, F)`` features: the mean of the trees'."""
        h, w, f = feats.shape
        x = np.ascontiguousarray(feats.reshape(-1, f), dtype=np.float32)
        workers = max(1, min(self.threads or cpu_threads(), len(self.trees)))
        chunks = [self.trees[k::workers] for k in range(workers)]

        def total(trees: list[Any]) -> np.ndarray:
            acc = np.zeros((x.shape[0], len(self.classes_present)), np.float64)
            for tree in trees:
                acc += tree.predict(x)
            return acc

        if workers == 1:
            summed = total(chunks[0])
        else:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(total, chunks))
            summed = parts[0]
            for part in parts[1:]:
                summed += part
        out = np.zeros((self.n_classes, h * w), np.float32)
        out[np.asarray(self.classes_present) - 1] = (summed / len(self.trees)).T
        return out.reshape(self.n_classes, h, w)

    def predict_proba(self, plane: np.ndarray) -> np.ndarray:
        """``(n_classes, H, W)`` float32 probabilities of classes ``1..n_classes`` for one 2D plane (unpainted
        classes get 0). Large planes are done in row bands with exact context."""
        plane = np.asarray(plane)
        if plane.ndim != 2:
            raise ValueError(
                f"predict_proba takes one 2D plane, got shape {plane.shape}; predict volumes slice by slice"
            )
        h, w = plane.shape
        if h * w <= self.tile_pixels:
            return self._proba(filter_features(plane, self.sigmas))
        out = np.empty((self.n_classes, h, w), np.float32)
        band = max(1, self.tile_pixels // w)
        for y0 in range(0, h, band):
            out[:, y0 : y0 + band] = self.predict_region(plane, None, y0, min(h, y0 + band), 0, w)
        return out

    def predict_region(
        self, image: Any, z: int | None, y0: int, y1: int, x0: int, x1: int, margin: int = CONTEXT
    ) -> np.ndarray:
        """``(n_classes, y1 - y0, x1 - x0)`` probabilities of a region of slice ``z`` (ignored for YX images).

        Only the region plus ``margin`` (clipped to the image) is read; with the default margin the
        result equals the same crop of :meth:`predict_proba` on the whole plane.
        """
        shape = tuple(image.shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"image has shape {shape}; predict_region takes a grey YX or ZYX image")
        h, w = shape[-2:]
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(
                f"region y {y0}:{y1}, x {x0}:{x1} is empty or outside the {h} x {w} plane; clip it to the image"
            )
        if len(shape) == 3 and (z is None or not 0 <= int(z) < shape[0]):
            raise ValueError(f"slice z={z} is outside the volume's {shape[0]} slices")
        ya, yb, xa, xb = max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)
        feats = filter_features(
            read_plane(image, None if z is None else int(z), slice(ya, yb), slice(xa, xb)), self.sigmas
        )
        return self._proba(np.ascontiguousarray(feats[y0 - ya : y1 - ya, x0 - xa : x1 - xa]))

    def predict(self, plane: np.ndarray) -> np.ndarray:
        """Labels ``1..n_classes`` (uint8) of one 2D plane: the most probable class."""
        return (self.predict_proba(plane).argmax(axis=0) + 1).astype(np.uint8)

    def channels(self, image: Any, box: tuple[slice, ...]) -> np.ndarray:
        """``(n_classes, h, w)`` float32 probabilities of an xy ``box`` of ``image`` (slices over its axes, one plane
        deep in a volume), as a network's extra input channels. The last few boxes are remembered (a live preview
        asks for the same view again and again), as long as ``image`` is the same object."""
        z = None if len(box) == 2 else int(box[0].start)
        key = (z, box[-2].start, box[-2].stop, box[-1].start, box[-1].stop, tuple(image.shape))
        with self._lock:
            for i, (ref, k, value) in enumerate(self._recent):
                if k == key and ref() is image:
                    self._recent.insert(0, self._recent.pop(i))
                    return value
        value = self.predict_region(image, z, box[-2].start, box[-2].stop, box[-1].start, box[-1].stop)
        try:
            ref = weakref.ref(image)
        except TypeError:  # an image that takes no weak reference is not remembered
            return value
        with self._lock:
            self._recent.insert(0, (ref, key, value))
            del self._recent[RECENT_BOXES:]
        return value

    # -- a network's buffers -------------------------------------------------------------------------------------------
    def to_buffers(self) -> ForestBuffers:
        """The trees as buffers of a network (:class:`ForestBuffers`), node for node."""
        buffers = ForestBuffers(
            self.n_classes,
            self.classes_present,
            self.n_features,
            self.sigmas,
            [t.node_count for t in self.trees],
            [t.max_depth for t in self.trees],
        )
        with torch.no_grad():
            for name, field in (("left", "children_left"), ("right", "children_right"), ("feature", "feature")):
                values = np.concatenate([getattr(t, field) for t in self.trees]).astype(np.int32)
                getattr(buffers, name).copy_(torch.from_numpy(values))
            thresholds = np.concatenate([t.threshold for t in self.trees]).astype(np.float64)
            buffers.threshold_bits.copy_(torch.from_numpy(thresholds.view(np.int64)))
            values = np.concatenate([t.value.reshape(t.node_count, -1) for t in self.trees]).astype(np.float32)
            buffers.value.copy_(torch.from_numpy(values))
        buffers.cache["forest"] = self
        return buffers

    @classmethod
    def from_buffers(cls, buffers: ForestBuffers) -> FittedForest:
        """The forest stored in ``buffers``, its trees rebuilt once (and kept with the buffers until they change)."""
        cached = buffers.cache.get("forest")
        if cached is not None:
            return cached
        from sklearn.tree._tree import Tree

        dtype = _node_dtype()
        left, right, feature = (
            getattr(buffers, n).cpu().numpy().astype(np.int64) for n in ("left", "right", "feature")
        )
        threshold = buffers.threshold_bits.cpu().numpy().view(np.float64)
        value = buffers.value.cpu().numpy().astype(np.float64)
        n_out = len(buffers.classes)
        trees, start = [], 0
        for count, depth in zip(buffers.node_counts, buffers.depths):
            end = start + count
            nodes = np.zeros(count, dtype)
            nodes["left_child"], nodes["right_child"] = left[start:end], right[start:end]
            nodes["feature"], nodes["threshold"] = feature[start:end], threshold[start:end]
            nodes["n_node_samples"], nodes["weighted_n_node_samples"] = 1, 1.0
            tree = Tree(buffers.n_features, np.array([n_out], dtype=np.intp), 1)
            state = {"max_depth": depth, "node_count": count, "nodes": nodes}
            tree.__setstate__({**state, "values": np.ascontiguousarray(value[start:end].reshape(count, 1, n_out))})
            trees.append(tree)
            start = end
        forest = cls(trees, buffers.classes, buffers.n_classes, buffers.sigmas)
        buffers.cache["forest"] = forest
        return forest


__all__ = ["FittedForest", "read_plane"]
