"""Verdicts on what a network predicts: collapsed (never kept) and painted-but-never-predicted (flagged)."""

from __future__ import annotations

import pytest

from napari_msd.training.health import check

NAMES = ["membrane", "interior", "mito"]


def test_balanced_prediction_is_healthy():
    h = check([300, 600, 100], painted=[1, 2, 3], class_names=NAMES)
    assert h.collapsed is None and h.warning is None
    assert h.fractions == pytest.approx((0.3, 0.6, 0.1))


def test_one_class_nearly_everywhere_is_collapsed():
    h = check([1, 990, 9], painted=[1, 2], class_names=NAMES)
    assert "interior on 99.0%" in h.collapsed and "2 classes are painted" in h.collapsed
    assert "\n" not in h.collapsed


def test_a_single_painted_class_cannot_collapse():
    """Fine-tuning may paint one class only; a prediction of mostly that class is then not a collapse."""
    assert check([0, 1000, 0], painted=[2], class_names=NAMES).collapsed is None


def test_a_painted_class_never_predicted_is_a_warning():
    h = check([400, 600, 0], painted=[1, 2, 3], class_names=NAMES)
    assert h.collapsed is None and h.warning.startswith("mito is painted but (almost) never predicted")


def test_an_unpainted_class_may_be_absent():
    assert check([400, 600, 0], painted=[1, 2], class_names=NAMES).warning is None


def test_empty_counts_and_report():
    assert check([0, 0, 0], painted=[1, 2], class_names=NAMES).collapsed is None
    report = check([1, 990, 9], painted=[1, 2], class_names=NAMES).to_dict(NAMES)
    assert report["predicted_fractions"]["interior"] == 0.99 and report["collapsed"]


def test_one_class_everywhere_is_fine_when_the_held_out_labels_agree():
    """Tiles around corrections of one class: that class nearly everywhere, every held-out pixel right."""
    assert check([995, 5], painted=[1, 2], class_names=NAMES[:2], recall=[1.0, 0.9]).collapsed is None
    assert check([995, 5], painted=[1, 2], class_names=NAMES[:2], recall=[1.0, float("nan")]).collapsed is None
    assert check([995, 5], painted=[1, 2], class_names=NAMES[:2], recall=[1.0, 0.1]).collapsed
