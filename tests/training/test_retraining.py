import numpy as np
import pytest

from napari_msd.training.retraining import retraining_data
from napari_msd.training.sampling import TrainingData, TrainingDataError


def zeros(shape, dtype):
    return np.zeros(shape, dtype)


def test_a_first_training_learns_every_label_and_replays_other_layers():
    image = np.zeros((8, 8), np.float32)
    labels = np.zeros((8, 8), np.uint8)
    labels[1, 1] = 1
    other = TrainingData(image, np.ones((4, 4), np.uint8), "other strokes")
    run = retraining_data(image, labels, "strokes", [other], zeros)
    assert [d.name for d in run.data] == ["strokes"] and run.data[0].labels is labels
    assert run.replay == [other]
    assert [d.name for d in run.trained_on] == ["strokes", "other strokes"]


def test_labels_changed_since_the_parent_are_the_data_and_the_unchanged_ones_are_replayed():
    image = np.zeros((6, 6), np.float32)
    then = np.zeros((6, 6), np.uint8)
    then[0, :3] = 1
    then[5, :2] = 2
    now = then.copy()
    now[0, 0] = 2  # repainted
    now[3, 3] = 1  # painted
    now[5, 0] = 0  # erased: in neither
    other = TrainingData(image, np.ones((6, 6), np.uint8), "other")
    run = retraining_data(image, now, "strokes", [TrainingData(image, then, "strokes"), other], zeros)

    (new,) = run.data
    assert new.name == "strokes (new)" and (run.new_pixels, run.replayed_pixels) == (2, 3)
    assert {tuple(p) for p in np.argwhere(new.labels)} == {(0, 0), (3, 3)}
    kept, replayed_other = run.replay
    assert kept.name == "strokes" and np.count_nonzero(kept.labels) == 3 and kept.labels[5, 0] == 0
    assert replayed_other is other
    assert run.trained_on[0].labels is now and run.trained_on[1] is other  # the next retraining splits against now


def test_retraining_without_a_changed_label_says_what_to_do():
    image = np.zeros((4, 4), np.float32)
    labels = np.ones((4, 4), np.uint8)
    with pytest.raises(TrainingDataError, match="no label changed in 'strokes' since v2 was trained; paint"):
        retraining_data(image, labels, "strokes", [TrainingData(image, labels.copy(), "strokes")], zeros, parent="v2")


def test_a_snapshot_of_another_shape_is_another_layer_replayed_whole():
    image = np.zeros((4, 4), np.float32)
    labels = np.ones((4, 4), np.uint8)
    earlier = TrainingData(np.zeros((5, 5), np.float32), np.ones((5, 5), np.uint8), "strokes")
    run = retraining_data(image, labels, "strokes", [earlier], zeros)
    assert run.data[0].labels is labels and run.replay == [earlier]
