"""ilastik-style filter features of a 2D slice: the inputs of the random forest (training.forest) and of the
forest-context channels (base.forest_channels).

``filter_features`` is ilastik's standard 2D feature set at its default scales: raw intensity, then for each sigma in
``(0.7, 1.0, 1.6, 3.5, 5.0, 10.0)`` Gaussian smoothing, Laplacian of Gaussian, Gaussian gradient magnitude,
difference of Gaussians (``G(sigma) - G(0.66 sigma)``), structure-tensor eigenvalues (gradient at inner scale sigma,
smoothed at outer scale sigma / 2, as ilastik does) and Hessian-of-Gaussian eigenvalues, eigenvalues in descending
order: 1 + 6 x 8 = 49 features. Gaussian derivatives are scipy.ndimage's separable filters (``truncate=4``, reflecting
borders); the 2 x 2 eigenvalues are in closed form. Features of a pixel depend on the image within
:func:`context_radius` pixels only (60 at the default scales).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

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
