"""A random-forest pixel classifier on ilastik-style filter features: an instant first prediction.

It trains in seconds on the painted pixels and gives class probabilities for any plane, as a
first preview after pressing Train, as dense pseudo-labels for the network (training.teacher) and as
the network's extra input channels (training.context).

The features are :func:`napari_msd.base.features.filter_features` (ilastik's 49 standard 2D features). Features of
a pixel depend on the image within ``CONTEXT`` pixels only (60 at the default scales), so a crop with that much
context around a region gives exactly the features of the whole plane there; training reads only the labeled slices
(around their strokes) and prediction works on regions or row bands of large planes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..base.device import cpu_threads
from ..base.features import (  # noqa: F401  (re-exported: the forest's features)
    CONTEXT,
    FEATURES_PER_SIGMA,
    SIGMAS,
    TRUNCATE,
    context_radius,
    feature_names,
    filter_features,
)
from ..base.forest_channels import FittedForest, read_plane
from .sampling import TrainingData, TrainingDataError


def _check_data(data: Sequence[TrainingData]) -> None:
    for d in data:
        ishape, lshape = tuple(d.image.shape), tuple(d.labels.shape)
        if len(ishape) not in (2, 3):
            raise TrainingDataError(
                f"image {d.name} has shape {ishape}; the random forest needs a grey YX or ZYX "
                "image (split channels into separate images first)"
            )
        if ishape != lshape:
            rgb = len(ishape) == 3 and ishape[:2] == lshape and ishape[2] in (3, 4)
            raise TrainingDataError(
                f"labels {lshape} and image {ishape} of {d.name} differ in shape; "
                + (
                    "the image looks RGB: convert it to grey first"
                    if rgb
                    else "paint the labels on a layer of the image's shape"
                )
            )
        if np.dtype(d.image.dtype).kind not in "iuf":
            raise TrainingDataError(f"image {d.name} has dtype {d.image.dtype}; use a grey-value image")
        if np.dtype(d.labels.dtype).kind not in "iub":
            raise TrainingDataError(
                f"labels of {d.name} are {d.labels.dtype}; labels must be integers (0 = unlabeled, 1..K = classes)"
            )


def _labels_slice(d: TrainingData, z: int) -> np.ndarray:
    lab = np.asarray(d.labels[...] if len(d.labels.shape) == 2 else d.labels[z])
    if lab.dtype.kind == "b":
        lab = lab.astype(np.uint8)
    if lab.dtype.kind == "i" and lab.size and lab.min() < 0:
        raise TrainingDataError(f"labels of {d.name} contain negative values; use 0 = unlabeled, 1..K = classes")
    return lab


class PixelForest(FittedForest):
    """A random forest over :func:`filter_features` fitted on painted pixels; build it with :meth:`fit`.

    ``model``: the scikit-learn forest; ``n_classes``: classes predicted (``1..n_classes``); ``classes_present``:
    those painted; ``n_fit_pixels``: pixels the forest was fitted on (after subsampling). Prediction is
    :class:`~napari_msd.base.forest_channels.FittedForest`'s, over the forest's own trees.
    """

    def __init__(
        self,
        model: Any,
        n_classes: int,
        n_fit_pixels: int,
        sigmas: tuple[float, ...] = SIGMAS,
        tile_pixels: int = 2**22,
    ):
        super().__init__(
            [e.tree_ for e in model.estimators_], model.classes_, n_classes, sigmas, tile_pixels, model.n_jobs
        )
        self.model = model
        self.n_fit_pixels = int(n_fit_pixels)

    @classmethod
    def fit(
        cls,
        data: TrainingData | Sequence[TrainingData],
        n_classes: int | None = None,
        *,
        n_estimators: int = 100,
        max_per_class: int = 20_000,
        seed: int = 0,
        threads: int | None = None,
    ) -> PixelForest:
        """Fit on the labeled pixels of ``data`` (0 = unlabeled, 1..K = classes).

        Features are computed only on labeled xy slices, around their labels; each class is
        subsampled (seeded) to at most ``max_per_class`` pixels. ``n_classes`` defaults to the
        highest label painted; ``threads`` to :func:`cpu_threads`.
        """
        from sklearn.ensemble import RandomForestClassifier

        data = [data] if isinstance(data, TrainingData) else list(data)
        if max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
        _check_data(data)

        # pass 1: labeled pixels per class and slice (labels read slice by slice)
        counts: list[tuple[int, int, np.ndarray]] = []  # (data index, z, bincount of that slice)
        for i, d in enumerate(data):
            depth = 1 if len(d.image.shape) == 2 else d.image.shape[0]
            for z in range(depth):
                lab = _labels_slice(d, z)
                painted = lab[lab != 0]
                if painted.size:
                    counts.append((i, z, np.bincount(painted.astype(np.int64))))
        width = max((len(c) for _, _, c in counts), default=0)
        totals = sum((np.pad(c, (0, width - len(c))) for _, _, c in counts), np.zeros(width, np.int64))
        present = [int(c) for c in np.flatnonzero(totals)]
        if not present:
            raise TrainingDataError("no labeled pixel found; paint a few strokes of each class (label 0 is unlabeled)")
        if len(present) < 2:
            raise TrainingDataError(f"only class {present[0]} is labeled; paint at least two classes")
        highest = present[-1]
        n_classes = highest if n_classes is None else int(n_classes)
        if n_classes < highest:
            raise TrainingDataError(
                f"labels use class {highest} but {n_classes} classes are defined; add a class or repaint those pixels"
            )
        if n_classes > 255:
            raise TrainingDataError(f"{n_classes} classes; the random forest predicts at most 255")

        # which pixels of each class to keep: a seeded subset of their raster order over all slices
        rng = np.random.default_rng(seed)
        chosen = {
            c: (
                np.sort(rng.choice(int(totals[c]), max_per_class, replace=False)) if totals[c] > max_per_class else None
            )
            for c in present
        }
        offset = dict.fromkeys(present, 0)

        # pass 2: features of the kept pixels, computed on a crop around them with exact context
        xs, ys = [], []
        for i, z, slice_counts in counts:
            d = data[i]
            lab = _labels_slice(d, z)
            mask = lab != 0
            for k in np.flatnonzero(slice_counts):
                c, n = int(k), int(slice_counts[k])
                if (picked := chosen[c]) is not None:
                    lo, hi = np.searchsorted(picked, (offset[c], offset[c] + n))
                    where = np.flatnonzero(lab == c)
                    mask.flat[where] = False
                    mask.flat[where[picked[lo:hi] - offset[c]]] = True
                offset[c] += n
            if not mask.any():
                continue
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            r0, r1 = max(0, rows[0] - CONTEXT), min(lab.shape[0], rows[-1] + 1 + CONTEXT)
            c0, c1 = max(0, cols[0] - CONTEXT), min(lab.shape[1], cols[-1] + 1 + CONTEXT)
            feats = filter_features(read_plane(d.image, z, slice(r0, r1), slice(c0, c1)))
            keep = mask[r0:r1, c0:c1]
            xs.append(feats[keep])
            ys.append(lab[r0:r1, c0:c1][keep].astype(np.int64))
        x, y = np.concatenate(xs), np.concatenate(ys)
        model = RandomForestClassifier(n_estimators=n_estimators, n_jobs=threads or cpu_threads(), random_state=seed)
        model.fit(x, y)
        return cls(model, n_classes, len(y))
