"""Forest channels in training: out-of-fold probabilities on the planes the forest learned from (planes as folds, or
a single plane's two halves), the kept forest's elsewhere, and when a configuration takes them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_msd.base.inputs import InputSpec
from napari_msd.training.context import FOLDS, fit_context, forest_channels_apply
from napari_msd.training.engine import TrainConfig
from napari_msd.training.forest import PixelForest
from napari_msd.training.sampling import TrainingData, split
from napari_msd.training.teacher import TrainingStrokes

FAST = {"threads": 1, "seed": 0}


def _index(image, labels):
    return split(TrainingData(image, labels), InputSpec(), 0.0, 0)  # every stroke trains: folds are easy to rebuild


def test_painted_planes_get_the_forest_of_the_other_planes(make_task):
    image, labels, _ = make_task(shape=(4, 64, 64), seed=1)
    labels[3] = 0  # strokes on planes 0, 1, 2; plane 3 unpainted
    ix = _index(image, labels)
    ctx = fit_context([ix], 2, **FAST)
    assert ctx.folds == 3 and ctx.in_sample == 0 and ctx.channels == 2
    for z in (0, 1, 2):
        others = labels.copy()
        others[z] = 0
        fold = PixelForest.fit(TrainingData(image, others), 2, seed=0, threads=1)
        np.testing.assert_allclose(ctx.planes[id(image), z], fold.predict_proba(image[z].astype(np.float32)), atol=1e-3)
        kept = ctx.forest.predict_proba(image[z].astype(np.float32))
        assert not np.allclose(ctx.planes[id(image), z], kept, atol=1e-3)  # the kept forest saw these strokes
    box = (slice(3, 4), slice(8, 40), slice(0, 64))  # unpainted: the kept forest, computed on demand
    np.testing.assert_allclose(ctx.region(image, box), ctx.forest.predict_region(image, 3, 8, 40, 0, 64), atol=1e-6)
    assert (id(image), 3) not in ctx.planes


def test_many_planes_share_at_most_four_folds(make_task):
    image, labels, _ = make_task(shape=(7, 48, 48), seed=2)
    ctx = fit_context([_index(image, labels)], 2, **FAST)
    assert ctx.folds == FOLDS == 4
    assert sorted(z for _, z in ctx.planes) == list(range(7))


def test_a_single_painted_plane_is_split_in_halves(make_task):
    image, labels, _ = make_task(shape=(96, 64), seed=3)
    ix = _index(image, labels)
    ctx = fit_context([ix], 2, **FAST)
    assert ctx.folds == 2 and ctx.in_sample == 0
    strokes = TrainingStrokes(ix).plane(None)
    at = int(np.median(np.argwhere(strokes > 0)[:, 0]))  # rows: the longer axis
    top = np.where(np.arange(96)[:, None] >= at, strokes, 0)  # the strokes of the bottom half teach the top half
    forest = PixelForest.fit(TrainingData(image, top.astype(np.uint16)), 2, seed=0, threads=1)
    expected = forest.predict_region(image, None, 0, at, 0, 64)
    np.testing.assert_allclose(ctx.planes[id(image), None][:, :at], expected, atol=1e-3)


def test_a_fold_without_two_classes_keeps_the_forest_of_all_strokes(make_task):
    image, labels, _ = make_task(shape=(2, 64, 64), seed=4)
    labels[0][labels[0] == 2] = 0  # plane 0: class 1 only; plane 1: both
    ctx = fit_context([_index(image, labels)], 2, **FAST)
    assert ctx.folds == 1 and ctx.in_sample == 1  # plane 1's fold (plane 0's strokes) has one class
    kept = ctx.forest.predict_proba(image[1].astype(np.float32))
    np.testing.assert_allclose(ctx.planes[id(image), 1], kept, atol=1e-3)


def test_fine_tuning_keeps_the_given_forest_and_folds_only_its_labels(make_task):
    image, labels, _ = make_task(shape=(3, 64, 64), seed=5)
    earlier = labels.copy()
    earlier[2] = 0
    parent = PixelForest.fit(TrainingData(image, earlier), 2, seed=0, threads=1)
    new = np.zeros_like(labels)
    new[2] = labels[2]  # new labels on a plane the parent's forest never saw
    ctx = fit_context([_index(image, new), _index(image, earlier)], 2, forest=parent, fit_on=[_index(image, earlier)])
    assert ctx.forest is parent and ctx.folds == 2
    np.testing.assert_allclose(ctx.planes[id(image), 2], parent.predict_proba(image[2].astype(np.float32)), atol=1e-3)


def test_a_new_network_takes_the_forest_channels_only_when_asked():
    assert forest_channels_apply(TrainConfig()) is False
    assert forest_channels_apply(TrainConfig(forest_channels=True)) is True


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"input": InputSpec(mode="2.5d", slices=3)}, "they need 2D input on xy planes"),
        ({"input": InputSpec(mode="3d")}, "they need 2D input on xy planes"),
        ({"input": InputSpec(orientations=("xy", "xz"))}, "they need 2D input on xy planes"),
        ({"arch": "ensemble"}, "an ensemble's members take the image alone"),
        ({"pretrained": "body.msd"}, "a pretrained body learned the image alone"),
    ],
)
def test_asking_for_forest_channels_where_the_input_cannot_take_them_is_one_line(changes, why):
    config = dataclasses.replace(TrainConfig(forest_channels=True), **changes)
    with pytest.raises(ValueError, match=f"{why}; train without the forest channels") as err:
        forest_channels_apply(config)
    assert "\n" not in str(err.value)


def test_the_kept_forest_learns_the_held_out_strokes_too(make_task):
    image, labels, _ = make_task(shape=(2, 96, 96), seed=6)
    ix = split(TrainingData(image, labels), InputSpec(), 0.3, 0)
    assert ix.val  # some strokes held out
    ctx = fit_context([ix], 2, **FAST)
    assert ctx.forest.n_fit_pixels == int((labels > 0).sum())  # as a forest on its own would
    for z in (0, 1):  # each plane's channels come from the forest of the other plane's strokes, held-out ones too
        others = labels.copy()
        others[z] = 0
        fold = PixelForest.fit(TrainingData(image, others), 2, seed=0, threads=1)
        np.testing.assert_allclose(ctx.planes[id(image), z], fold.predict_proba(image[z].astype(np.float32)), atol=1e-3)
