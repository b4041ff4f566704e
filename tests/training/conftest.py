"""Shared synthetic data for the training tests: small, fast, and learnable by tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msd.training.sampling import TrainingData


def _make_task(shape=(192, 192), square=24, seed=0, levels=(60, 180), noise=20.0, classes=(1, 2), stroke=12):
    """A checkerboard of dark (class 1) and bright (class 2) squares with Gaussian noise.

    Returns ``(image uint8, labels uint8, truth uint8)``: one short horizontal stroke of
    ``stroke`` pixels is painted in the middle of each square whose class is in ``classes``.
    A 3-tuple ``shape`` gives a volume whose every slice is painted the same way.
    """
    rng = np.random.default_rng(seed)
    plane = shape[-2:]
    yy, xx = np.indices(plane)
    truth2d = np.where(((yy // square) + (xx // square)) % 2 == 0, 1, 2).astype(np.uint8)
    labels2d = np.zeros(plane, np.uint8)
    for r0 in range(0, plane[0] - square + 1, square):
        for c0 in range(0, plane[1] - square + 1, square):
            r, c = r0 + square // 2, c0 + (square - stroke) // 2
            cls = truth2d[r, c0]
            if cls in classes:
                labels2d[r, c : c + stroke] = cls
    truth = np.broadcast_to(truth2d, shape).copy()
    labels = np.broadcast_to(labels2d, shape).copy()
    image = np.where(truth == 1, levels[0], levels[1]) + rng.normal(0, noise, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels, truth


def _predict(model: torch.nn.Module, normalization, image: np.ndarray) -> np.ndarray:
    """Classes 1..K of a whole 2D image by one forward pass."""
    with torch.no_grad():
        x = torch.from_numpy(normalization(image))[None, None]
        return model.eval()(x).argmax(1)[0].numpy() + 1


@pytest.fixture(scope="session")
def make_task():
    """:func:`_make_task`, the checkerboard task builder."""
    return _make_task


@pytest.fixture(scope="session")
def predict():
    """:func:`_predict`, whole-image prediction of a 2D image."""
    return _predict


@pytest.fixture(scope="module")
def task(make_task):
    """The default checkerboard task: ``(image, labels, truth)``."""
    return make_task()


@pytest.fixture
def data(task):
    """The default task as training data."""
    image, labels, _ = task
    return [TrainingData(image, labels, name="checkerboard")]
