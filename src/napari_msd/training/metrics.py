"""Segmentation metrics over label arrays, shared by the training engine and the benchmarks.

Convention: labels are integers, ``0`` in the ground truth means unlabeled and is ignored; classes are ``1..K``.
Every metric is computed from one confusion matrix ``cm`` of shape ``(K, K)`` where ``cm[i, j]`` counts labeled
pixels of true class ``i + 1`` predicted as class ``j + 1``. Plain numpy; no napari or Qt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["class_accuracy", "confusion_matrix", "dice", "global_accuracy", "iou", "recall", "summarize"]


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts, rows = true class ``1..K``, columns = predicted; pixels with ``truth == 0`` ignored.

    Raises ``ValueError`` on a shape mismatch, on truth values above ``K``, and on predictions outside ``1..K`` at
    labeled pixels (a prediction must name a class).
    """
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth and pred shapes differ: {truth.shape} vs {pred.shape}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    labeled = truth != 0
    t = truth[labeled].astype(np.int64)
    p = pred[labeled].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() > n_classes):
        raise ValueError(f"truth holds values outside 0..{n_classes}")
    if p.size and (p.min() < 1 or p.max() > n_classes):
        raise ValueError(f"pred holds values outside 1..{n_classes} at labeled pixels")
    counts = np.bincount((t - 1) * n_classes + (p - 1), minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def global_accuracy(cm: np.ndarray) -> float:
    """Fraction of labeled pixels classified correctly: ``trace(cm) / sum(cm)`` (NaN when nothing is labeled)."""
    cm = np.asarray(cm)
    return float(_ratio(np.trace(cm), cm.sum()))


def recall(cm: np.ndarray) -> np.ndarray:
    """Per-class true-positive rate ``cm[i, i] / sum_j cm[i, j]``; NaN for classes absent from the truth."""
    cm = np.asarray(cm)
    return _ratio(np.diag(cm), cm.sum(axis=1))


def class_accuracy(cm: np.ndarray) -> float:
    """Mean over classes of the per-class true-positive rate (the MS-D paper's "class accuracy").

    Classes absent from the truth are excluded from the mean; NaN when no class is present.
    """
    r = recall(cm)
    r = r[~np.isnan(r)]
    return float(r.mean()) if r.size else float("nan")


def iou(cm: np.ndarray) -> np.ndarray:
    """Per-class intersection over union ``TP / (TP + FP + FN)``; NaN for classes absent from truth and prediction."""
    cm = np.asarray(cm)
    tp = np.diag(cm)
    return _ratio(tp, cm.sum(axis=0) + cm.sum(axis=1) - tp)


def dice(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice coefficient ``2 TP / (2 TP + FP + FN)``; NaN for classes absent from truth and prediction."""
    cm = np.asarray(cm)
    return _ratio(2 * np.diag(cm), cm.sum(axis=0) + cm.sum(axis=1))


def summarize(truth: np.ndarray, pred: np.ndarray, n_classes: int, class_names: Sequence[str] | None = None) -> dict:
    """All metrics as plain Python floats / ints / lists (``json.dumps`` works; undefined values are ``nan``).

    Keys: ``n_pixels`` (labeled pixels compared), ``global_accuracy``, ``class_accuracy``, ``mean_iou`` and
    ``mean_dice`` (means over classes where defined), ``iou``, ``dice`` and ``recall`` (dicts class name -> value),
    ``confusion_matrix`` (nested lists, rows = truth). Class names default to ``"1".."K"``.
    """
    if class_names is None:
        class_names = [str(k) for k in range(1, n_classes + 1)]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
    cm = confusion_matrix(truth, pred, n_classes)
    per_iou, per_dice, per_recall = iou(cm), dice(cm), recall(cm)

    def nanmean(a: np.ndarray) -> float:
        a = a[~np.isnan(a)]
        return float(a.mean()) if a.size else float("nan")

    return {
        "n_pixels": int(cm.sum()),
        "global_accuracy": global_accuracy(cm),
        "class_accuracy": class_accuracy(cm),
        "mean_iou": nanmean(per_iou),
        "mean_dice": nanmean(per_dice),
        "iou": {name: float(v) for name, v in zip(class_names, per_iou, strict=True)},
        "dice": {name: float(v) for name, v in zip(class_names, per_dice, strict=True)},
        "recall": {name: float(v) for name, v in zip(class_names, per_recall, strict=True)},
        "confusion_matrix": cm.tolist(),
    }
