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

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from .device import cpu_threads

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


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray, out1: np.ndarray, out2: np.ndarray, tmp: np.ndarray) -> None:
    """Eigenvalues (larger into ``out1``, smaller into ``out2``) of the symmetric 2 x 2 matrices ``[[a, b], [b, c]]``;
    ``a``, ``b`` and ``tmp`` are overwritten."""
    np.add(a, c, out=tmp)
    tmp *= 0.5  # the mean
    np.subtract(a, c, out=a)
    a *= 0.5
    np.multiply(a, a, out=a)
    np.multiply(b, b, out=b)
    np.add(a, b, out=a)
    np.sqrt(a, out=a)  # the radius
    np.add(tmp, a, out=out1)
    np.subtract(tmp, a, out=out2)


def _sigma_features(img: np.ndarray, s: float, out: np.ndarray, work: np.ndarray) -> None:
    """The 8 features of one sigma into ``out`` ``(8, H, W)``, every intermediate in ``work`` ``(11, H, W)``: no
    array is allocated (on some machines returning freed arrays to the system and faulting them in again took as
    long as the filters themselves)."""
    a, b, c, gx, hxx, gy, hxy, hyy, t1, t2, t3 = work
    g1d = ndi.gaussian_filter1d
    # separable Gaussian derivatives sharing their first (row-axis) pass: 3 + 6 one-dimensional filters
    r0, r1, r2 = a, b, c
    for order, r in enumerate((r0, r1, r2)):
        g1d(img, s, axis=0, order=order, output=r)
    g1d(r0, s, axis=1, order=0, output=out[0])
    g1d(r0, s, axis=1, order=1, output=gx)
    g1d(r0, s, axis=1, order=2, output=hxx)
    g1d(r1, s, axis=1, order=0, output=gy)
    g1d(r1, s, axis=1, order=1, output=hxy)
    g1d(r2, s, axis=1, order=0, output=hyy)
    np.add(hxx, hyy, out=out[1])  # Laplacian of Gaussian
    xx, yy, xy = a, b, c  # the rows' passes are spent
    np.multiply(gx, gx, out=xx)
    np.multiply(gy, gy, out=yy)
    np.multiply(gx, gy, out=xy)
    np.add(xx, yy, out=out[2])
    np.sqrt(out[2], out=out[2])  # gradient magnitude
    g1d(img, 0.66 * s, axis=0, output=t1)
    g1d(t1, 0.66 * s, axis=1, output=t2)
    np.subtract(out[0], t2, out=out[3])  # difference of Gaussians
    outer = 0.5 * s  # structure tensor: the products smoothed at the outer scale, each in place
    for p in (yy, xy, xx):
        g1d(p, outer, axis=0, output=t1)
        g1d(t1, outer, axis=1, output=p)
    _eig2(yy, xy, xx, out[4], out[5], t3)
    _eig2(hyy, hxy, hxx, out[6], out[7], t3)


def filter_features(image2d: np.ndarray, sigmas: tuple[float, ...] = SIGMAS, threads: int | None = None) -> np.ndarray:
    """``(H, W, F)`` float32 ilastik-style features of one 2D slice (see the module docstring for the list).

    The sigmas are shared among ``threads`` (default: the usable cores; scipy's filters and numpy release the GIL),
    each with its own scratch planes; the result does not depend on the number of threads."""
    img = np.ascontiguousarray(image2d, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {img.shape}")
    per = len(FEATURES_PER_SIGMA)
    out = np.empty((1 + per * len(sigmas),) + img.shape, np.float32)  # channels first: fast writes
    out[0] = img
    # the widest kernels first, so that the threads finish together
    tasks = sorted(enumerate(sigmas), key=lambda item: -item[1])
    n = max(1, min(threads or cpu_threads(), len(tasks)))
    lock = threading.Lock()

    def work() -> None:
        scratch = np.empty((11,) + img.shape, np.float32)
        while True:
            with lock:
                if not tasks:
                    return
                k, s = tasks.pop(0)
            _sigma_features(img, s, out[1 + per * k : 1 + per * (k + 1)], scratch)

    if n == 1:
        work()
    else:
        with ThreadPoolExecutor(n) as pool:
            for future in [pool.submit(work) for _ in range(n)]:
                future.result()
    return np.ascontiguousarray(out.transpose(1, 2, 0))
