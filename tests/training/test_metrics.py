"""Segmentation metrics on small hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_msd.training.metrics import (
    class_accuracy,
    confusion_matrix,
    dice,
    global_accuracy,
    iou,
    recall,
    summarize,
)

# truth 0 = unlabeled (ignored); class 3 is absent from truth and prediction
TRUTH = np.array([[0, 1, 1], [2, 2, 1]])
PRED = np.array([[2, 1, 2], [2, 1, 1]])
# labeled pixels: (t1,p1) (t1,p2) (t2,p2) (t2,p1) (t1,p1)
CM = np.array([[2, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_confusion_matrix_ignores_unlabeled():
    cm = confusion_matrix(TRUTH, PRED, 3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, CM)


def test_prediction_at_unlabeled_pixel_may_be_anything():
    pred = PRED.copy()
    pred[0, 0] = 0  # no class at an ignored pixel: fine
    np.testing.assert_array_equal(confusion_matrix(TRUTH, pred, 3), CM)


def test_scalar_metrics():
    assert global_accuracy(CM) == pytest.approx(3 / 5)
    np.testing.assert_allclose(recall(CM), [2 / 3, 1 / 2, np.nan])
    # class 3 is absent from the truth: excluded from the mean
    assert class_accuracy(CM) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_iou_and_dice():
    # class 1: TP 2, FP 1, FN 1; class 2: TP 1, FP 1, FN 1; class 3: absent from both -> NaN
    np.testing.assert_allclose(iou(CM), [2 / 4, 1 / 3, np.nan])
    np.testing.assert_allclose(dice(CM), [4 / 6, 2 / 4, np.nan])


def test_class_predicted_but_absent_from_truth():
    truth = np.array([1, 1, 1, 2])
    pred = np.array([1, 3, 1, 2])
    cm = confusion_matrix(truth, pred, 3)
    np.testing.assert_array_equal(cm, [[2, 0, 1], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(iou(cm), [2 / 3, 1.0, 0.0])  # a false positive only: IoU 0, not NaN
    np.testing.assert_allclose(dice(cm), [4 / 5, 1.0, 0.0])
    assert math.isnan(recall(cm)[2])
    assert class_accuracy(cm) == pytest.approx((2 / 3 + 1) / 2)
    assert global_accuracy(cm) == pytest.approx(3 / 4)


def test_perfect_and_empty():
    t = np.array([[1, 2], [2, 0]])
    cm = confusion_matrix(t, np.array([[1, 2], [2, 1]]), 2)
    assert global_accuracy(cm) == 1.0 and class_accuracy(cm) == 1.0
    np.testing.assert_array_equal(iou(cm), [1.0, 1.0])
    empty = confusion_matrix(np.zeros((2, 2), int), np.ones((2, 2), int), 2)
    assert empty.sum() == 0
    assert math.isnan(global_accuracy(empty)) and math.isnan(class_accuracy(empty))
    assert np.isnan(iou(empty)).all()


def test_summarize_is_plain_and_json_friendly():
    s = summarize(TRUTH, PRED, 3, class_names=["membrane", "cell", "other"])
    assert s["n_pixels"] == 5
    assert s["global_accuracy"] == pytest.approx(0.6)
    assert s["class_accuracy"] == pytest.approx(7 / 12)
    assert s["iou"]["membrane"] == pytest.approx(0.5) and s["iou"]["cell"] == pytest.approx(1 / 3)
    assert math.isnan(s["iou"]["other"])
    assert s["mean_iou"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert s["mean_dice"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["dice"]["cell"] == pytest.approx(0.5)
    assert s["recall"]["membrane"] == pytest.approx(2 / 3)
    assert s["confusion_matrix"] == CM.tolist()
    for key in ("global_accuracy", "class_accuracy", "mean_iou", "mean_dice"):
        assert type(s[key]) is float
    assert all(type(v) is float for v in s["iou"].values())
    assert json.loads(json.dumps(s))["n_pixels"] == 5
    assert list(summarize(TRUTH, PRED, 3)["iou"]) == ["1", "2", "3"]


def test_works_on_3d_volumes():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=(4, 8, 8))
    pred = rng.integers(1, 3, size=(4, 8, 8))
    cm = confusion_matrix(truth, pred, 2)
    assert cm.sum() == (truth > 0).sum()
    assert np.trace(cm) == ((truth == pred) & (truth > 0)).sum()


@pytest.mark.parametrize(
    "truth, pred, n",
    [
        (np.array([1, 2]), np.array([1, 2, 2]), 2),  # shape mismatch
        (np.array([1, 3]), np.array([1, 1]), 2),  # truth class above K
        (np.array([1, 2]), np.array([0, 2]), 2),  # no class predicted at a labeled pixel
        (np.array([1, 2]), np.array([1, 3]), 2),  # prediction above K
    ],
)
def test_invalid_inputs_raise(truth, pred, n):
    with pytest.raises(ValueError):
        confusion_matrix(truth, pred, n)


def test_summarize_rejects_wrong_number_of_names():
    with pytest.raises(ValueError):
        summarize(TRUTH, PRED, 3, class_names=["a", "b"])
