"""The classic baseline: a random-forest pixel classifier on filter features, trained on sparse strokes (ilastik).

``filter_features`` is ilastik's standard 2D feature set at its default scales: raw intensity, then for each sigma in
``(0.7, 1.0, 1.6, 3.5, 5.0, 10.0)`` Gaussian smoothing, Laplacian of Gaussian, Gaussian gradient magnitude,
difference of Gaussians (``G(sigma) - G(0.66 sigma)``), structure-tensor eigenvalues (gradient at inner scale sigma,
smoothed at outer scale sigma / 2, as ilastik does) and Hessian-of-Gaussian eigenvalues, eigenvalues in descending
order: 1 + 6 x 8 = 49 features. Gaussian derivatives are scipy.ndimage's separable filters (``truncate=4``, reflecting
borders); the 2 x 2 eigenvalues are in closed form.

Run ``python benchmarks/rf_baseline.py [--data-dir DIR] [--json PATH]`` for the ISBI 2012 figures: strokes from
``isbi_strokes.make_strokes`` (default arguments), scored on the unpainted slices.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_strokes import CLASS_NAMES, DEFAULT_DATA_DIR, MEMBRANE, load_isbi, make_strokes  # noqa: E402

from napari_msd.training.metrics import summarize  # noqa: E402

SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
FEATURES_PER_SIGMA = ("gaussian", "log", "grad_mag", "dog", "st_ev1", "st_ev2", "hess_ev1", "hess_ev2")


def feature_names(sigmas: tuple[float, ...] = SIGMAS) -> list[str]:
    """Names of the ``filter_features`` channels, in order."""
    return ["raw"] + [f"{name}_{s:g}" for s in sigmas for name in FEATURES_PER_SIGMA]


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


def _as_volume(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 2 else a


def train_rf(image: np.ndarray, strokes: np.ndarray, n_estimators: int = 100, seed: int = 0):
    """A ``RandomForestClassifier(n_jobs=-1)`` fitted on the features of stroke pixels (``strokes > 0``).

    ``image`` and ``strokes`` are ``(Z, Y, X)`` (or one 2D slice); features are computed for painted slices only.
    """
    from sklearn.ensemble import RandomForestClassifier

    image, strokes = _as_volume(image), _as_volume(strokes)
    if image.shape != strokes.shape:
        raise ValueError(f"image {image.shape} and strokes {strokes.shape} differ in shape")
    xs, ys = [], []
    for z in np.flatnonzero((strokes != 0).reshape(len(strokes), -1).any(axis=1)):
        mask = strokes[z] != 0
        xs.append(filter_features(image[z])[mask])
        ys.append(strokes[z][mask])
    if not xs:
        raise ValueError("no stroke pixels to train on")
    model = RandomForestClassifier(n_estimators=n_estimators, n_jobs=-1, random_state=seed)
    model.fit(np.concatenate(xs), np.concatenate(ys))
    return model


def predict_rf(model, image: np.ndarray) -> np.ndarray:
    """Labels (the classes of the strokes, ``1..K``) for every pixel of ``image``, one slice at a time."""
    vol = _as_volume(image)
    out = np.empty(vol.shape, dtype=np.asarray(model.classes_).dtype)
    for z in range(len(vol)):
        feats = filter_features(vol[z])
        out[z] = model.predict(feats.reshape(-1, feats.shape[-1])).reshape(vol.shape[1:])
    return out if np.asarray(image).ndim == 3 else out[0]


def run_rf_baseline(data_dir: str | Path = DEFAULT_DATA_DIR, n_estimators: int = 100, seed: int = 0) -> dict:
    """Strokes (``make_strokes`` defaults), RF training, prediction and metrics on the unpainted ISBI 2012 slices."""
    image, labels = load_isbi(data_dir)
    strokes, painted = make_strokes(labels)
    test = [z for z in range(len(labels)) if z not in painted]

    t0 = time.perf_counter()
    model = train_rf(image, strokes, n_estimators=n_estimators, seed=seed)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = predict_rf(model, image[test])
    predict_seconds = time.perf_counter() - t0

    n_classes = int(labels.max())
    names = [CLASS_NAMES.get(c, str(c)) for c in range(1, n_classes + 1)]
    metrics = summarize(labels[test], pred, n_classes, class_names=names)
    return {
        "membrane_iou": metrics["iou"][CLASS_NAMES[MEMBRANE]],
        "pixel_accuracy": metrics["global_accuracy"],
        "class_accuracy": metrics["class_accuracy"],
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
        "stroke_pixels": int((strokes != 0).sum()),
        "painted_slices": painted,
        "test_slices": test,
        "n_features": len(feature_names()),
        "n_estimators": n_estimators,
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--n-estimators", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the result dict here")
    args = parser.parse_args(argv)
    result = run_rf_baseline(args.data_dir, n_estimators=args.n_estimators, seed=args.seed)
    m = result["metrics"]
    print(f"painted slices {result['painted_slices']}, {result['stroke_pixels']} stroke px; "
          f"scored on {len(result['test_slices'])} unpainted slices ({m['n_pixels']} px)")
    print(f"membrane IoU     {result['membrane_iou']:.4f}")
    print(f"cell IoU         {m['iou'][CLASS_NAMES[2]]:.4f}")
    print(f"pixel accuracy   {result['pixel_accuracy']:.4f}")
    print(f"class accuracy   {result['class_accuracy']:.4f}")
    print(f"train  {result['train_seconds']:.1f} s (features of {len(result['painted_slices'])} slices + fit)")
    print(f"predict {result['predict_seconds']:.1f} s (features + forest on {len(result['test_slices'])} slices)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
