"""A fitted forest's probabilities as channels: the same from its own trees, from a network's buffers and from
scikit-learn; boxes remembered per image; nothing rebuilt travels in a pickle."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from napari_msd.base.forest_channels import RECENT_BOXES, FittedForest
from napari_msd.models.forest_buffers import ForestBuffers
from napari_msd.training.forest import PixelForest
from napari_msd.training.sampling import TrainingData


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    truth = np.ones((2, 64, 80), np.uint8)
    truth[:, 20:44] = 3  # a band of class 3; class 2 is never painted
    image = np.where(truth == 1, 70.0, 160.0) + rng.normal(0, 25, truth.shape)
    strokes = np.zeros_like(truth)
    strokes[0, 5, 4:70] = 1
    strokes[0, 30, 4:70] = 3
    forest = PixelForest.fit(TrainingData(image.astype(np.float32), strokes), 3, n_estimators=12, threads=1)
    return forest, image.astype(np.float32)


def test_buffers_give_the_same_probabilities_as_the_forest_and_scikit_learn(fitted):
    forest, image = fitted
    rebuilt = FittedForest.from_buffers(copy.deepcopy(forest.to_buffers()))  # a copy holds no rebuilt trees
    assert rebuilt is not forest and rebuilt.classes_present == (1, 3) and rebuilt.n_classes == 3
    ours, again = forest.predict_proba(image[1]), rebuilt.predict_proba(image[1])
    np.testing.assert_array_equal(ours, again)
    assert ours.shape == (3, 64, 80) and not ours[1].any()  # the unpainted class gets 0
    from napari_msd.base.features import filter_features

    feats = filter_features(image[1]).reshape(-1, 49)
    sk = forest.model.predict_proba(feats).T.reshape(2, 64, 80)
    np.testing.assert_allclose(ours[[0, 2]], sk, atol=1e-6)


def test_buffers_hold_thresholds_bit_for_bit(fitted):
    forest, _ = fitted
    buffers = forest.to_buffers()
    thresholds = np.concatenate([t.threshold for t in forest.trees])
    np.testing.assert_array_equal(buffers.threshold_bits.numpy().view(np.float64), thresholds)
    assert buffers.config()["node_counts"] == [t.node_count for t in forest.trees]


def test_loading_other_trees_drops_the_rebuilt_ones(fitted):
    forest, _ = fitted
    buffers = forest.to_buffers()
    assert FittedForest.from_buffers(buffers) is forest
    buffers.load_state_dict(buffers.state_dict())  # the same trees: kept
    assert FittedForest.from_buffers(buffers) is forest
    state = {k: v.clone() for k, v in buffers.state_dict().items()}
    state["value"] = state["value"].flip(1)
    buffers.load_state_dict(state)
    rebuilt = FittedForest.from_buffers(buffers)
    assert rebuilt is not forest


def test_pickles_leave_rebuilt_trees_and_remembered_boxes_behind(fitted):
    forest, image = fitted
    buffers = forest.to_buffers()
    forest.channels(image, (slice(0, 1), slice(0, 32), slice(0, 32)))
    clone = pickle.loads(pickle.dumps(buffers))
    assert clone.cache == {} and torch.equal(clone.value, buffers.value)
    twin = pickle.loads(pickle.dumps(forest))
    assert twin._recent == []
    np.testing.assert_array_equal(twin.predict_proba(image[0]), forest.predict_proba(image[0]))


def test_channels_of_a_box_are_remembered_per_image(fitted, monkeypatch):
    forest, image = fitted
    forest = copy.copy(forest)
    forest._recent = []
    calls = []
    real = FittedForest.predict_region
    monkeypatch.setattr(
        FittedForest, "predict_region", lambda self, *a, **k: calls.append(a[1:]) or real(self, *a, **k)
    )
    box = (slice(1, 2), slice(8, 40), slice(10, 70))
    first = forest.channels(image, box)
    np.testing.assert_array_equal(first, real(forest, image, 1, 8, 40, 10, 70))
    assert forest.channels(image, box) is first and len(calls) == 1  # remembered
    other = image.copy()
    forest.channels(other, box)  # another image: computed again
    assert len(calls) == 2
    for k in range(RECENT_BOXES):
        forest.channels(image, (slice(0, 1), slice(k, k + 8), slice(0, 8)))
    forest.channels(image, box)  # pushed out by newer boxes
    assert len(calls) == 3 + RECENT_BOXES
    plane = forest.channels(image[0], (slice(0, 64), slice(0, 80)))  # a 2D image: the plane itself
    np.testing.assert_array_equal(plane, forest.predict_proba(image[0]))


def test_forest_buffers_refuse_a_forest_without_trees_or_with_foreign_classes():
    with pytest.raises(ValueError, match="at least one tree"):
        ForestBuffers(2, [1, 2], 49, [1.0], [], [])
    with pytest.raises(ValueError, match=r"within 1\.\.2"):
        ForestBuffers(2, [1, 3], 49, [1.0], [3], [1])
