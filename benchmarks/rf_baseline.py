"""The classic baseline: a random-forest pixel classifier on filter features, trained on sparse strokes (ilastik).

The classifier is ``napari_msd.training.forest.PixelForest`` on ``filter_features``, ilastik's standard 2D feature
set at its default scales (49 features; see that module); this script trains it with 100 trees on all stroke pixels.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_strokes import CLASS_NAMES, DEFAULT_DATA_DIR, MEMBRANE, load_isbi, make_strokes  # noqa: E402

from napari_msd.training.forest import (  # noqa: E402, F401  (re-exported for the other benchmarks)
    FEATURES_PER_SIGMA,
    SIGMAS,
    PixelForest,
    feature_names,
    filter_features,
)
from napari_msd.training.metrics import summarize  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402


def _as_volume(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 2 else a


def train_rf(image: np.ndarray, strokes: np.ndarray, n_estimators: int = 100, seed: int = 0) -> PixelForest:
    """A :class:`PixelForest` (all cores) fitted on the features of stroke pixels (``strokes > 0``).

    ``image`` and ``strokes`` are ``(Z, Y, X)`` (or one 2D slice); features are computed for painted slices only.
    At most 20,000 pixels per class are used: all of them on ISBI (~4k per class).
    """
    return PixelForest.fit([TrainingData(image, strokes, "strokes")], n_estimators=n_estimators, seed=seed)


def predict_rf(model: PixelForest, image: np.ndarray) -> np.ndarray:
    """Labels (``1..K``, uint8) for every pixel of ``image``, one slice at a time."""
    vol = _as_volume(image)
    out = np.empty(vol.shape, dtype=np.uint8)
    for z in range(len(vol)):
        out[z] = model.predict(vol[z])
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
    print(
        f"painted slices {result['painted_slices']}, {result['stroke_pixels']} stroke px; "
        f"scored on {len(result['test_slices'])} unpainted slices ({m['n_pixels']} px)"
    )
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
