"""A dense teacher for the network: a random forest fitted on the training strokes labels every confident pixel
of the painted planes, so each training patch carries labels on its unpainted pixels too (Shallow2Deep,
Matskevych et al. 2022). The strokes stay the primary target; the forest's labels enter the loss with their own
weight, only where no stroke is and the forest is confident.

Only the training part of the strokes is shown to the forest (held-out strokes stay unseen), and only xy planes
are labeled (2D and 2.5D inputs); 3D training has no teacher. With ``extra_planes``, the forest also labels that
many unpainted planes of each volume, evenly spread, so the network sees the rest of the volume too (with the
teacher's labels only).

A retraining's forest learns only the earlier labels (``fit_on``) and teaches the planes of the new ones too:
corrections sit on the pixels a forest gets wrong, and a forest that also learned them labeled the unpainted slices
worse (one round of simulated corrections, stroke seed 0: ISBI 2012 membrane IoU 0.529 -> 0.317, VNC mean class
IoU 0.480 -> 0.409); with the earlier labels' forest, a VNC retraining also made 144 steps in its 120 s instead
of 47.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .forest import PixelForest
from .sampling import LabelIndex, TrainingData

PseudoLabels = dict[int, dict[int | None, np.ndarray]]  # id(LabelIndex) -> plane (None for a 2D image) -> labels


class TrainingStrokes:
    """The training pixels of a :class:`LabelIndex` (with ``held_out``, its held-out pixels too) as a lazy label
    volume, read plane by plane."""

    def __init__(self, index: LabelIndex, held_out: bool = False):
        self.shape = tuple(index.data.image.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint16)
        self._planes: dict[int | None, list[tuple[int, np.ndarray]]] = {}
        pairs = list(index.train.items()) + (list(index.val.items()) if held_out else [])
        for c, xy in pairs:
            if self.ndim == 2:
                self._planes.setdefault(None, []).append((c, xy))
                continue
            for z in np.unique(xy[:, 0]):
                self._planes.setdefault(int(z), []).append((c, xy[xy[:, 0] == z, 1:]))

    def planes(self) -> list[int | None]:
        """Planes holding training strokes, in order (None: the plane of a 2D image)."""
        return sorted(
            (z for z, items in self._planes.items() if any(len(yx) for _, yx in items)),
            key=lambda z: -1 if z is None else z,
        )

    def items(self, z: int | None) -> list[tuple[int, np.ndarray]]:
        """``(class, (M, 2) yx coordinates)`` of plane ``z``'s training strokes."""
        return list(self._planes.get(z, []))

    def plane(self, z: int | None) -> np.ndarray:
        out = np.zeros(self.shape[-2:], self.dtype)
        for c, yx in self._planes.get(z, []):
            out[yx[:, 0], yx[:, 1]] = c
        return out

    def __getitem__(self, key):
        if key is Ellipsis and self.ndim == 2:
            return self.plane(None)
        if isinstance(key, int | np.integer) and self.ndim == 3:
            return self.plane(int(key))
        raise IndexError(f"training strokes are read one plane at a time, not with {key!r}")


def unpainted_planes(n_planes: int, painted: Sequence[int], count: int) -> list[int]:
    """Up to ``count`` of the planes ``0..n_planes-1`` that are not ``painted``, evenly spread."""
    free = [z for z in range(n_planes) if z not in set(painted)]
    count = min(max(0, count), len(free))
    return [free[int((k + 0.5) * len(free) / count)] for k in range(count)]


def forest_pseudo_labels(
    indices: Sequence[LabelIndex],
    n_classes: int,
    confidence: float = 0.8,
    seed: int = 0,
    threads: int | None = None,
    extra_planes: int = 0,
    fit_on: Sequence[LabelIndex] | None = None,
) -> PseudoLabels:
    """Fit a forest on the training strokes of ``fit_on`` (default: ``indices``) and label the pixels of the
    painted planes of ``indices`` (and of ``extra_planes`` unpainted planes per volume) where its probability of
    the winning class is at least ``confidence`` (1..K; 0 elsewhere)."""
    if not 0 < confidence <= 1:
        raise ValueError(f"the teacher's confidence threshold must be in (0, 1], got {confidence}")
    strokes = {id(ix): TrainingStrokes(ix) for ix in indices if ix.train}
    fit_on = indices if fit_on is None else fit_on
    data = [TrainingData(ix.data.image, TrainingStrokes(ix), ix.data.name) for ix in fit_on if ix.train]
    forest = PixelForest.fit(data, n_classes, seed=seed, threads=threads)
    out: PseudoLabels = {}
    done: dict[tuple[int, int | None], np.ndarray] = {}  # (image, plane): a retraining's new and replayed labels
    for ix in indices:  # share one image and often its planes: label each once
        if id(ix) not in strokes:
            continue
        planes = {}
        painted = strokes[id(ix)].planes()
        if ix.data.image.ndim == 3:  # a volume: every plane is a number
            numbered = [z for z in painted if z is not None]
            painted = [*painted, *unpainted_planes(ix.data.image.shape[0], numbered, extra_planes)]
        for z in painted:
            image = ix.data.image
            if (id(image), z) not in done:
                plane = np.asarray(image[...] if z is None else image[z], dtype=np.float32)
                proba = forest.predict_proba(plane)
                labels = (proba.argmax(0) + 1).astype(np.uint8)
                labels[proba.max(0) < confidence] = 0
                done[id(image), z] = labels
            planes[z] = done[id(image), z]
        out[id(ix)] = planes
    return out


__all__ = ["PseudoLabels", "TrainingStrokes", "forest_pseudo_labels", "unpainted_planes"]
