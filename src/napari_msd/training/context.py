"""The forest's class probabilities as extra input channels of the network, during training (auto-context).

The network sees, beside the image, the class probabilities of a random forest fitted on the strokes
(:mod:`napari_msd.base.forest_channels`), and learns from the strokes where to trust them, with the context of the
whole patch. The forest the model keeps (and predicts with) learned every stroke, held-out ones included, as a
forest on its own would; but a forest predicts its own training strokes far better than anything else, and a network
fed those probabilities would trust them more than they deserve on the planes nobody painted (and its held-out
strokes would tell nothing). So on the planes it learned from, the channels come out of fold (stacked
generalisation, Wolpert 1992): those planes are dealt into up to :data:`FOLDS` groups, and each group's planes get
the probabilities of a forest fitted on the other groups' strokes. Strokes on a single plane are split into its two
halves instead (where half the strokes lie on either side), each half predicted by the forest of the other. A fold
whose strokes hold fewer than two classes keeps the forest of all strokes there (``in_sample``).

Fine-tuning keeps the parent's forest: its earlier labels (``fit_on``) get out-of-fold channels as above, the planes
of new labels the parent's forest, which never saw them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..base.forest_channels import FittedForest
from .forest import PixelForest
from .sampling import LabelIndex, TrainingData, TrainingDataError
from .teacher import TrainingStrokes

FOLDS = 4  # most forests fitted for the out-of-fold channels (each on the strokes of the other folds)

PlaneKey = tuple[int, int | None]  # (id of the image, plane; None for a 2D image)


@dataclass
class ForestContext:
    """The forest channels of the training images: ``forest`` (the one the model keeps), ``planes``: precomputed
    ``(K, H, W)`` probabilities of planes (out of fold where the forest learned them), others computed on demand."""

    forest: FittedForest
    planes: dict[PlaneKey, np.ndarray] = field(default_factory=dict)
    folds: int = 0  # forests fitted for out-of-fold channels
    in_sample: int = 0  # planes (or plane halves) whose fold had too few classes: the kept forest's channels

    @property
    def channels(self) -> int:
        return self.forest.n_classes

    def region(self, image: Any, box: tuple[slice, ...]) -> np.ndarray:
        """``(K, h, w)`` float32 channels of an xy box (``box``: slices over the image's axes, one plane deep)."""
        z = None if len(box) == 2 else int(box[0].start)
        rows, cols = box[-2], box[-1]
        plane = self.planes.get((id(image), z))
        if plane is not None:
            return plane[:, rows, cols].astype(np.float32)
        return self.forest.predict_region(image, z, rows.start, rows.stop, cols.start, cols.stop)

    def add_planes(self, image: Any, zs: Sequence[int | None]) -> None:
        """Precompute the kept forest's channels of whole planes ``zs`` of ``image`` (not already there)."""
        for z in zs:
            if (id(image), z) not in self.planes:
                plane = np.asarray(image[...] if z is None else image[z], dtype=np.float32)
                self.planes[id(image), z] = self.forest.predict_proba(plane).astype(np.float16)


class _StrokesOutside(TrainingStrokes):
    """The labels of an index (held-out ones included) without those of some planes, or of one side of a cut
    through a plane."""

    def __init__(
        self, index: LabelIndex, planes: Collection[int | None] = (), cut: tuple[int, int, bool] | None = None
    ):
        super().__init__(index, held_out=True)
        self._planes = {z: v for z, v in self._planes.items() if z not in planes}
        if cut is not None:  # (in-plane axis 0/1, coordinate, keep the side below it)
            axis, at, below = cut
            self._planes = {
                z: [(c, yx[(yx[:, axis] < at) == below]) for c, yx in items] for z, items in self._planes.items()
            }


def forest_channels_apply(config: Any) -> bool:
    """Whether a new network of ``config`` (a ``TrainConfig``) takes the forest channels (``forest_channels``);
    refused with one line where its input cannot take them."""
    if not config.forest_channels:
        return False
    why_not = None
    if config.input.mode != "2d" or tuple(config.input.orientations) != ("xy",):
        why_not = "the forest channels are computed on xy planes: they need 2D input on xy planes"
    elif config.arch == "ensemble":
        why_not = "an ensemble's members take the image alone"
    elif config.pretrained:
        why_not = "a pretrained body learned the image alone"
    if why_not is not None:
        raise ValueError(f"{why_not}; train without the forest channels")
    return True


def _fit(data: list[TrainingData], n_classes: int, seed: int, threads: int | None) -> PixelForest | None:
    """A forest on ``data``'s labels, or None where they hold fewer than two classes."""
    try:
        return PixelForest.fit(data, n_classes, seed=seed, threads=threads)
    except TrainingDataError:
        return None


def _units(indices: Sequence[LabelIndex]) -> list[tuple[LabelIndex, int | None]]:
    """(index, plane) of every plane carrying training strokes, each image's plane once."""
    seen: set[PlaneKey] = set()
    units = []
    for ix in indices:
        for z in TrainingStrokes(ix, held_out=True).planes():
            if (id(ix.data.image), z) not in seen:
                seen.add((id(ix.data.image), z))
                units.append((ix, z))
    return units


def fit_context(
    indices: Sequence[LabelIndex],
    n_classes: int,
    seed: int = 0,
    threads: int | None = None,
    forest: FittedForest | None = None,
    fit_on: Sequence[LabelIndex] | None = None,
) -> ForestContext:
    """Forest channels for training on ``indices``: the kept ``forest`` (default: fitted on every label of
    ``fit_on``, default ``indices``, held-out ones included), out-of-fold channels on the planes of ``fit_on``'s
    labels, the kept forest's on the other planes of ``indices``' labels (module docstring)."""
    fit_on = [ix for ix in (indices if fit_on is None else fit_on) if ix.train or ix.val]
    if forest is None:
        forest = PixelForest.fit(
            [TrainingData(ix.data.image, TrainingStrokes(ix, held_out=True), ix.data.name) for ix in fit_on],
            n_classes,
            seed=seed,
            threads=threads,
        )
    context = ForestContext(forest)
    units = _units(fit_on)
    if len(units) >= 2:
        groups = [units[k :: min(FOLDS, len(units))] for k in range(min(FOLDS, len(units)))]
        for group in groups:
            left_out = {(id(ix.data.image), z) for ix, z in group}
            data = []
            for ix in fit_on:
                planes = {z for key_image, z in left_out if key_image == id(ix.data.image)}
                data.append(TrainingData(ix.data.image, _StrokesOutside(ix, planes), ix.data.name))
            fold = _fit(data, n_classes, seed, threads)
            context.folds += fold is not None
            context.in_sample += 0 if fold is not None else len(group)
            for ix, z in group:
                plane = np.asarray(ix.data.image[...] if z is None else ix.data.image[z], dtype=np.float32)
                context.planes[id(ix.data.image), z] = (fold or forest).predict_proba(plane).astype(np.float16)
    elif units:
        ix, z = units[0]
        context.planes[id(ix.data.image), z] = _halves(ix, z, forest, n_classes, seed, threads, context)
    for ix in indices:
        context.add_planes(ix.data.image, TrainingStrokes(ix, held_out=True).planes())
    return context


def _halves(
    ix: LabelIndex,
    z: int | None,
    forest: FittedForest,
    n_classes: int,
    seed: int,
    threads: int | None,
    ctx: ForestContext,
) -> np.ndarray:
    """Out-of-fold channels of a single painted plane: each half predicted by the forest of the other half's strokes."""
    image = ix.data.image
    h, w = image.shape[-2:]
    axis = 0 if h >= w else 1
    coords = np.concatenate([yx for _, yx in TrainingStrokes(ix, held_out=True).items(z)])
    at = int(np.median(coords[:, axis])) if len(coords) else (h if axis == 0 else w) // 2
    at = min(max(at, 1), (h if axis == 0 else w) - 1)
    out = np.empty((n_classes, h, w), np.float16)
    for below in (True, False):
        other = _fit(
            [TrainingData(image, _StrokesOutside(ix, cut=(axis, at, not below)), ix.data.name)],
            n_classes,
            seed,
            threads,
        )
        ctx.folds += other is not None
        ctx.in_sample += other is None
        rows = slice(0, at) if (axis == 0 and below) else slice(at, h) if axis == 0 else slice(0, h)
        cols = slice(0, at) if (axis == 1 and below) else slice(at, w) if axis == 1 else slice(0, w)
        out[:, rows, cols] = (other or forest).predict_region(image, z, rows.start, rows.stop, cols.start, cols.stop)
    return out


__all__ = ["FOLDS", "ForestContext", "fit_context"]
