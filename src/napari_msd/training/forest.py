"""A random-forest pixel classifier on ilastik-style filter features: an instant first prediction.

It trains in seconds on the painted pixels and gives class probabilities for any plane, as a
first preview after pressing Train and as dense pseudo-labels for the network.

``filter_features`` is ilastik's standard 2D feature set at its default scales: raw intensity, then for each sigma in
``(0.7, 1.0, 1.6, 3.5, 5.0, 10.0)`` Gaussian smoothing, Laplacian of Gaussian, Gaussian gradient magnitude,
difference of Gaussians (``G(sigma) - G(0.66 sigma)``), structure-tensor eigenvalues (gradient at inner scale sigma,
smoothed at outer scale sigma / 2, as ilastik does) and Hessian-of-Gaussian eigenvalues, eigenvalues in descending
order: 1 + 6 x 8 = 49 features. Gaussian derivatives are scipy.ndimage's separable filters (``truncate=4``, reflecting
borders); the 2 x 2 eigenvalues are in closed form.

Features of a pixel depend on the image within :func:`context_radius` pixels only (60 at the default
scales), so a crop with that much context around a region gives exactly the features of the whole
plane there; training reads only the labeled slices (around their strokes) and prediction works on
regions or row bands of large planes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..base.device import cpu_threads
from .sampling import TrainingData, TrainingDataError

SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
FEATURES_PER_SIGMA = ("gaussian", "log", "grad_mag", "dog", "st_ev1", "st_ev2", "hess_ev1", "hess_ev2")
TRUNCATE = 4.0  # scipy.ndimage's default


def feature_names(sigmas: tuple[float, ...] = SIGMAS) -> list[str]:
    """Names of the ``filter_features`` channels, in order."""
    return ["raw"] + [f"{name}_{s:g}" for s in sigmas for name in FEATURES_PER_SIGMA]


def _radius(sigma: float) -> int:
    return int(TRUNCATE * float(sigma) + 0.5)  # scipy's kernel radius


def context_radius(sigmas: tuple[float, ...] = SIGMAS) -> int:
    """Pixels of context beyond which the image does not change a pixel's features (the structure tensor's
    gradient radius plus its smoothing radius at the largest sigma)."""
    return max(max(_radius(s) + _radius(0.5 * s), _radius(0.66 * s)) for s in sigmas)


CONTEXT = context_radius(SIGMAS)


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (larger, smaller) of the symmetric 2 x 2 matrices ``[[a, b], [b, c]]``."""
    mean = 0.5 * (a + c)
    rad = np.sqrt((0.5 * (a - c)) ** 2 + b * b)
    return mean + rad, mean - rad


def filter_features(image2d: np.ndarray, sigmas: tuple[float, ...] = SIGMAS) -> np.ndarray:
    """``(H, W, F)`` float32 ilastik-style features of one 2D slice (see the module docstring for the list)."""
    img = np.asarray(image2d, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {img.shape}")
    out = np.empty((1 + len(FEATURES_PER_SIGMA) * len(sigmas),) + img.shape, np.float32)  # channels first: fast writes
    out[0] = img
    k = 1
    for s in sigmas:
        # separable Gaussian derivatives sharing their first (row-axis) pass: 3 + 6 one-dimensional filters
        r0, r1, r2 = (ndi.gaussian_filter1d(img, s, axis=0, order=o) for o in (0, 1, 2))
        g, gx, hxx = (ndi.gaussian_filter1d(r0, s, axis=1, order=o) for o in (0, 1, 2))
        gy, hxy = (ndi.gaussian_filter1d(r1, s, axis=1, order=o) for o in (0, 1))
        hyy = ndi.gaussian_filter1d(r2, s, axis=1)
        out[k] = g
        np.add(hxx, hyy, out=out[k + 1])
        out[k + 2] = np.sqrt(gx * gx + gy * gy)
        np.subtract(g, ndi.gaussian_filter(img, 0.66 * s), out=out[k + 3])
        outer = 0.5 * s
        syy, sxy, sxx = (ndi.gaussian_filter(p, outer) for p in (gy * gy, gx * gy, gx * gx))
        out[k + 4], out[k + 5] = _eig2(syy, sxy, sxx)
        out[k + 6], out[k + 7] = _eig2(hyy, hxy, hxx)
        k += len(FEATURES_PER_SIGMA)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _read_plane(image: Any, z: int | None, rows: slice, cols: slice) -> np.ndarray:
    """One 2D box of a YX or ZYX (possibly lazy) image, read as numpy."""
    return np.asarray(image[rows, cols] if len(image.shape) == 2 else image[z, rows, cols])


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


class PixelForest:
    """A fitted random forest over :func:`filter_features`; build it with :meth:`fit`.

    ``n_classes``: classes predicted (``1..n_classes``); ``classes_present``: those painted;
    ``n_fit_pixels``: pixels the forest was fitted on (after subsampling).
    """

    def __init__(
        self,
        model: Any,
        n_classes: int,
        n_fit_pixels: int,
        sigmas: tuple[float, ...] = SIGMAS,
        tile_pixels: int = 2**22,
    ):
        self.model = model
        self.n_classes = int(n_classes)
        self.classes_present = tuple(int(c) for c in model.classes_)
        self.n_fit_pixels = int(n_fit_pixels)
        self.sigmas = tuple(sigmas)
        self.tile_pixels = int(tile_pixels)  # planes larger than this are predicted in row bands

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
            feats = filter_features(_read_plane(d.image, z, slice(r0, r1), slice(c0, c1)))
            keep = mask[r0:r1, c0:c1]
            xs.append(feats[keep])
            ys.append(lab[r0:r1, c0:c1][keep].astype(np.int64))
        x, y = np.concatenate(xs), np.concatenate(ys)
        model = RandomForestClassifier(n_estimators=n_estimators, n_jobs=threads or cpu_threads(), random_state=seed)
        model.fit(x, y)
        return cls(model, n_classes, len(y))

    def _proba(self, feats: np.ndarray) -> np.ndarray:
        """``(n_classes, h, w)`` float32 probabilities from ``(h, w, F)`` features."""
        h, w, f = feats.shape
        p = self.model.predict_proba(feats.reshape(-1, f))
        out = np.zeros((self.n_classes, h * w), np.float32)
        out[np.asarray(self.classes_present) - 1] = p.T
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
            _read_plane(image, None if z is None else int(z), slice(ya, yb), slice(xa, xb)), self.sigmas
        )
        return self._proba(np.ascontiguousarray(feats[y0 - ya : y1 - ya, x0 - xa : x1 - xa]))

    def predict(self, plane: np.ndarray) -> np.ndarray:
        """Labels ``1..n_classes`` (uint8) of one 2D plane: the most probable class."""
        return (self.predict_proba(plane).argmax(axis=0) + 1).astype(np.uint8)
