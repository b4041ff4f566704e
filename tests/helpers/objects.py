"""Shared by the object tests: random class blobs, balls, and a check that two labellings are the same objects."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def class_blobs(shape: tuple[int, ...], seed: int = 0, sigma: float = 1.2, n_classes: int = 3) -> np.ndarray:
    """Labels 0..n_classes of smoothed noise cut at quantiles: many objects of every class, touching each other."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape), sigma)
    cuts = np.quantile(noise, np.linspace(0.25, 0.85, n_classes))
    return np.searchsorted(cuts, noise).astype(np.uint8)


def ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    """A disk (2D) or ball (3D) mask."""
    grids = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


def reference_components(labels: np.ndarray, connectivity: int, classes=None) -> np.ndarray:
    """Whole-volume ``scipy.ndimage.label`` of each class, numbered one class after the other."""
    structure = ndimage.generate_binary_structure(labels.ndim, connectivity)
    out = np.zeros(labels.shape, np.int64)
    offset = 0
    for c in classes if classes is not None else np.unique(labels[labels > 0]):
        found, n = ndimage.label(labels == c, structure)
        out[found > 0] = found[found > 0] + offset
        offset += n
    return out


def assert_same_objects(ours: np.ndarray, reference: np.ndarray) -> None:
    """The two labellings differ only by a renumbering of the objects (0 stays 0)."""
    ours, reference = np.asarray(ours).astype(np.int64), np.asarray(reference).astype(np.int64)
    np.testing.assert_array_equal(ours > 0, reference > 0)
    pairs = np.unique(np.stack([ours[ours > 0], reference[reference > 0]]), axis=1)
    assert pairs.shape[1] == len(np.unique(ours[ours > 0])) == len(np.unique(reference[reference > 0]))
