"""Sparse labels to training patches: which pixels train, which validate, and class balance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_msd.base.inputs import InputSpec
from napari_msd.base.normalization import Normalization
from napari_msd.training.sampling import (
    CELL,
    IGNORE,
    MAX_CLASSES,
    PatchSampler,
    TrainingData,
    TrainingDataError,
    scan_labels,
    split,
    to_target,
    validation_tiles,
)

IDENTITY = Normalization(0.0, 1.0)  # x -> x: input values are the image values


def _position_image(shape) -> np.ndarray:
    """Every pixel holds its own flat index, so a patch tells where it was cut from."""
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def _strokes_2d(shape=(256, 256), seed=0) -> np.ndarray:
    """Many short strokes of classes 1 and 2 scattered over the image (stroke-like labels)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for i in range(40):
        r, c = rng.integers(4, shape[0] - 4), rng.integers(4, shape[1] - 24)
        labels[r, c : c + 16] = 1 + i % 2
    return labels


def _masks(index, shape):
    """Pixel masks of the validation pixels and of the pixels in excluded (validation + guard) cells."""
    val = np.zeros(shape, bool)
    for xy in index.val.values():
        val[tuple(xy.T)] = True
    excluded = index.excluded
    for axis, c in enumerate(index.cell):
        excluded = np.repeat(excluded, c, axis=axis)
    excluded = excluded[tuple(slice(0, n) for n in shape)]
    return val, excluded


def _expected_targets(flat_positions, labels, val, excluded, n_classes):
    coords = np.unravel_index(flat_positions.astype(np.int64), labels.shape)
    expected = labels[coords].astype(np.int64) - 1
    expected[(labels[coords] == 0) | val[coords] | excluded[coords] | (expected >= n_classes)] = IGNORE
    return expected


# -- which pixels train --------------------------------------------------------------------------------


def test_only_labeled_training_pixels_are_targets_2d():
    labels = _strokes_2d()
    image = _position_image(labels.shape)
    index = split(TrainingData(image, labels), InputSpec(), val_fraction=0.15, seed=0)
    assert index.val, "the scattered strokes should give validation pixels"
    val, excluded = _masks(index, labels.shape)
    sampler = PatchSampler([index], InputSpec(), (32, 32), 2, IDENTITY, seed=1)
    x, y = sampler.sample(64)
    assert x.shape == (64, 1, 32, 32) and x.dtype == np.float32
    assert y.shape == (64, 32, 32) and y.dtype == np.int64
    np.testing.assert_array_equal(y, _expected_targets(x[:, 0], labels, val, excluded, 2))
    assert (y >= 0).any(axis=(1, 2)).all(), "every patch should hold a labeled pixel near its centre"
    assert not (y[val[np.unravel_index(x[:, 0].astype(np.int64), labels.shape)]] >= 0).any()


@pytest.mark.parametrize(
    "spec",
    [InputSpec(), InputSpec(mode="2.5d", slices=5, orientations=("xy", "xz", "yz")), InputSpec(mode="3d")],
    ids=["2d", "2.5d-3-orientations", "3d"],
)
def test_only_labeled_training_pixels_are_targets_volume(spec):
    shape = (40, 64, 64)
    rng = np.random.default_rng(3)
    labels = np.zeros(shape, np.uint8)
    for i in range(60):
        z, r, c = rng.integers(0, 40), rng.integers(0, 64), rng.integers(0, 48)
        labels[z, r, c : c + 12] = 1 + i % 3  # class 3 lies beyond n_classes=2: must be ignored too
    image = _position_image(shape)
    index = split(TrainingData(image, labels), spec, val_fraction=0.2, seed=0)
    val, excluded = _masks(index, shape)
    size = (16, 24, 24) if spec.mode == "3d" else (24, 24)
    sampler = PatchSampler([index], spec, size, 2, IDENTITY, seed=2)
    x, y = sampler.sample(48)
    centre = x[:, spec.in_channels // 2] if spec.mode != "3d" else x[:, 0]
    np.testing.assert_array_equal(y, _expected_targets(centre, labels, val, excluded, 2))
    assert (y >= 0).any()


def test_targets_ignore_unlabeled_and_out_of_range_classes():
    labels = np.array([[0, 1, 2], [3, 0, 1]], np.uint16)
    np.testing.assert_array_equal(to_target(labels, 2), [[IGNORE, 0, 1], [IGNORE, IGNORE, 0]])
    np.testing.assert_array_equal(to_target(labels, 3), [[IGNORE, 0, 1], [2, IGNORE, 0]])


# -- validation apart from training ---------------------------------------------------------------------------


def test_validation_strokes_are_whole_and_apart_from_training_strokes():
    labels = _strokes_2d(seed=4)
    index = split(TrainingData(np.zeros(labels.shape, np.float32), labels), InputSpec(), 0.15, seed=0)
    assert index.val
    for c in (1, 2):
        components, n = ndimage.label(labels == c, structure=np.ones((3, 3)))
        val_ids = set(components[tuple(index.val.get(c, np.zeros((0, 2), int)).T)])
        train_ids = set(components[tuple(index.train[c].T)])
        assert not val_ids & train_ids, "a stroke was split between training and validation"
        # no training pixel of the class touches a validation pixel of the class
        val_mask = np.zeros(labels.shape, bool)
        val_mask[tuple(index.val.get(c, np.zeros((0, 2), int)).T)] = True
        near_val = ndimage.binary_dilation(val_mask, structure=np.ones((3, 3)))
        assert not near_val[tuple(index.train[c].T)].any()
    # about val_fraction of each class is held out (whole strokes of 16 px: coarse)
    for c in (1, 2):
        total = int((labels == c).sum())
        assert 0.05 * total <= len(index.val[c]) <= 0.4 * total
        assert len(index.val[c]) + len(index.train[c]) <= total


@pytest.mark.parametrize("spec", [InputSpec(), InputSpec(mode="2.5d", slices=3)], ids=["2d", "2.5d"])
def test_validation_on_a_volume_is_apart_from_training_on_neighbouring_slices(spec):
    """Strokes painted on consecutive slices (the usual way to annotate a tomogram): a held-out stroke
    must not have a training stroke one voxel away on the next slice, or validation scores a near-copy
    of the training data ("never random neighbours", module docstring)."""
    labels = np.zeros((30, 128, 128), np.uint8)
    for z in (10, 11, 12, 20, 21, 22):
        for i in range(8):
            labels[z, 10 + 14 * i, 10:40] = 1
            labels[z, 10 + 14 * i, 70:100] = 2
    index = split(TrainingData(np.zeros(labels.shape, np.float32), labels), spec, 0.15, seed=0)
    assert index.val, "enough strokes for validation"
    val = np.zeros(labels.shape, bool)
    for xy in index.val.values():
        val[tuple(xy.T)] = True
    distance = ndimage.distance_transform_cdt(~val, metric="chessboard")  # voxels to the nearest validation voxel
    train = np.concatenate(list(index.train.values()))
    assert distance[tuple(train.T)].min() >= 2, "a training voxel touches a validation voxel"


def test_dense_labels_hold_out_cells_with_a_guard_ring():
    labels = np.zeros((256, 256), np.uint8)
    labels[:, :128] = 1  # two large painted regions: not stroke-like
    labels[:, 128:] = 2
    labels[:, 126:130] = 0
    index = split(TrainingData(np.zeros(labels.shape, np.float32), labels), InputSpec(), 0.15, seed=0)
    assert index.val and all(len(v) for v in index.val.values())
    val_cells = np.unique(np.concatenate(list(index.val.values())) // CELL, axis=0)
    train_cells = np.unique(np.concatenate(list(index.train.values())) // CELL, axis=0)
    cheb = np.abs(val_cells[:, None, :] - train_cells[None, :, :]).max(-1)
    assert cheb.min() >= 2, "a training cell touches a validation cell"
    val_px = np.concatenate(list(index.val.values()))
    train_px = np.concatenate(list(index.train.values()))
    far = np.abs(val_px[::37, None, :] - train_px[None, ::41, :]).max(-1)
    assert far.min() > CELL
    # the guard is marked excluded, and no training pixel lies in an excluded cell
    assert not index.excluded[tuple((train_px // CELL).T)].any()
    assert index.excluded[tuple((val_px // CELL).T)].all()
    for c in (1, 2):
        held = len(index.val[c]) / int((labels == c).sum())
        assert 0.1 <= held <= 0.4


def test_single_short_stroke_per_class_gives_no_validation_but_trains():
    labels = np.zeros((64, 64), np.uint8)
    labels[10, 5:15] = 1
    labels[50, 40:52] = 2
    index = split(TrainingData(np.zeros(labels.shape, np.float32), labels), InputSpec(), 0.15, seed=0)
    assert index.val == {}
    assert index.count("train") == {1: 10, 2: 12}
    assert not index.excluded.any()
    assert validation_tiles([index], InputSpec(), (32, 32), 2, IDENTITY) == []
    x, y = PatchSampler([index], InputSpec(), (32, 32), 2, IDENTITY).sample(8)
    assert set(np.unique(y)) == {IGNORE, 0, 1}


def test_no_validation_when_val_fraction_is_zero():
    labels = _strokes_2d()
    index = split(TrainingData(np.zeros(labels.shape, np.float32), labels), InputSpec(), 0.0)
    assert index.val == {}
    assert index.count("train") == {1: int((labels == 1).sum()), 2: int((labels == 2).sum())}


def test_validation_tiles_score_each_held_out_pixel_once():
    labels = _strokes_2d(seed=5)
    image = _position_image(labels.shape)
    index = split(TrainingData(image, labels), InputSpec(), 0.15, seed=0)
    tiles = validation_tiles([index], InputSpec(), (48, 48), 2, IDENTITY, max_tiles=1000)
    assert tiles
    scored = []
    for x, y in tiles:
        assert x.shape == (1, 48, 48) and y.shape == (48, 48)
        where = y != IGNORE
        positions = x[0][where].astype(np.int64)
        np.testing.assert_array_equal(y[where], labels.ravel()[positions] - 1)  # targets align with the image
        scored.append(positions)
    scored = np.concatenate(scored)
    assert len(scored) == len(np.unique(scored)), "a validation pixel was scored twice"
    val = np.concatenate([np.ravel_multi_index(tuple(xy.T), labels.shape) for xy in index.val.values()])
    assert set(scored) == set(val), "validation tiles must score exactly the held-out pixels"


# -- class balance and replay -----------------------------------------------------------------------------------


def _spy_picks(sampler, labels_of):
    picked = []
    original = sampler._pick

    def spy(group):
        ix, center = original(group)
        picked.append((id(ix), int(labels_of[id(ix)][tuple(center)])))
        return ix, center

    sampler._pick = spy
    return picked


def test_patches_are_class_balanced():
    labels = np.zeros((128, 128), np.uint8)
    labels[10:110, 10:60] = 1  # 5000 px
    labels[64, 90:128] = 2  # 38 px, over 100x fewer, far enough that patches hold one class
    counts = {1: int((labels == 1).sum()), 2: int((labels == 2).sum())}
    assert counts[1] >= 100 * counts[2]
    data = TrainingData(np.zeros(labels.shape, np.float32), labels)
    index = split(data, InputSpec(), 0.0)
    sampler = PatchSampler([index], InputSpec(), (32, 32), 2, IDENTITY, seed=0)
    picked = _spy_picks(sampler, {id(index): labels})
    _, y = sampler.sample(400)
    classes = np.array([c for _, c in picked])
    assert len(classes) == 400
    assert 0.4 <= (classes == 2).mean() <= 0.6
    # the rare class really reaches the loss: its targets appear in about half of the patches
    assert 0.35 <= (y == 1).any(axis=(1, 2)).mean() <= 0.65


def test_replay_fraction_of_patches_come_from_earlier_annotations():
    labels_new = np.zeros((64, 64), np.uint8)
    labels_new[20, 10:30] = 2
    labels_old = np.zeros((64, 64), np.uint8)
    labels_old[10, 10:30] = 1
    labels_old[40, 10:30] = 2
    new = split(TrainingData(np.zeros((64, 64), np.float32), labels_new), InputSpec(), 0.0)
    old = split(TrainingData(np.zeros((64, 64), np.float32), labels_old), InputSpec(), 0.0)
    sampler = PatchSampler([new], InputSpec(), (32, 32), 2, IDENTITY, seed=0, replay=[old], replay_fraction=0.3)
    picked = _spy_picks(sampler, {id(new): labels_new, id(old): labels_old})
    sampler.sample(400)
    from_old = np.array([i == id(old) for i, _ in picked])
    assert 0.22 <= from_old.mean() <= 0.38
    classes_old = np.array([c for i, c in picked if i == id(old)])
    assert 0.3 <= (classes_old == 1).mean() <= 0.7  # balanced within the replayed annotations too


def test_sampling_is_reproducible():
    labels = _strokes_2d()
    index = split(TrainingData(_position_image(labels.shape), labels), InputSpec(), 0.15)
    a = PatchSampler([index], InputSpec(), (32, 32), 2, IDENTITY, seed=7).sample(6)
    b = PatchSampler([index], InputSpec(), (32, 32), 2, IDENTITY, seed=7).sample(6)
    c = PatchSampler([index], InputSpec(), (32, 32), 2, IDENTITY, seed=8).sample(6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


# -- scanning labels -----------------------------------------------------------------------------------------------


def test_scan_finds_every_labeled_pixel():
    labels = _strokes_2d()
    coords = scan_labels(labels)
    assert sorted(coords) == [1, 2]
    for c, xy in coords.items():
        assert xy.shape[1] == 2
        expected = np.argwhere(labels == c)
        np.testing.assert_array_equal(np.unique(xy, axis=0), expected)


def test_dense_labels_on_lazy_volume_are_thinned_and_read_in_slabs(counting_array):
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 3, size=(32, 64, 64)).astype(np.uint8)  # about 43,700 px of each class
    lazy = counting_array(dense, chunks=(4, 64, 64))
    coords = scan_labels(lazy, max_per_class=1000, seed=0)
    assert sorted(coords) == [1, 2]
    for c, xy in coords.items():
        assert 250 <= len(xy) <= 1000, len(xy)
        assert (dense[tuple(xy.T)] == c).all()  # thinned to a subset of the right class
        assert len(np.unique(xy, axis=0)) == len(xy)
        assert xy[:, 0].min() < 8 and xy[:, 0].max() >= 24  # spread over the whole volume, not the first slabs
    assert lazy.elements_read == dense.size  # one pass
    assert max(lazy.reads) <= 4 * 64 * 64  # slab by slab, never the whole volume


def test_split_works_on_a_lazy_array(counting_array):
    labels = _strokes_2d()
    index = split(
        TrainingData(counting_array(np.zeros(labels.shape, np.float32)), counting_array(labels)), InputSpec(), 0.15
    )
    assert sum(index.count("train").values()) + sum(index.count("val").values()) <= int((labels > 0).sum())
    assert index.count("train")[1] > 0 and index.count("train")[2] > 0


def test_labels_and_image_shape_mismatch_is_refused():
    with pytest.raises(TrainingDataError) as err:
        split(TrainingData(np.zeros((64, 64)), np.zeros((64, 65), np.uint8), name="cells"), InputSpec())
    text = str(err.value)
    assert "\n" not in text and "cells" in text and "(64, 65)" in text
    assert isinstance(err.value, ValueError)


def test_labels_beyond_max_classes_are_refused_at_the_first_slab_holding_them(counting_array):
    """The image given as labels (values up to 253) is refused in one line, without scanning the rest."""
    assert MAX_CLASSES == 63
    image = np.random.default_rng(0).integers(0, 254, size=(32, 64, 64)).astype(np.uint8)
    lazy = counting_array(image, chunks=(4, 64, 64))
    with pytest.raises(TrainingDataError) as err:
        split(TrainingData(image, lazy, name="em.tif"), InputSpec())
    text = str(err.value)
    assert "\n" not in text and "labels of em.tif contain the value 253: is this the image?" in text
    assert "0 = unlabeled, 1..K = classes; K must be below 64" in text
    assert lazy.elements_read == 4 * 64 * 64  # stopped at the first slab
    labels = np.zeros((64, 64), np.uint8)
    labels[5, 5:20], labels[40, 5:20] = 1, MAX_CLASSES  # the highest class allowed
    assert sorted(scan_labels(labels)) == [1, MAX_CLASSES]


def test_negative_labels_are_refused_in_one_line():
    labels = np.zeros((64, 64), np.int16)
    labels[5, 5:20], labels[40, 5:20] = 1, -2
    with pytest.raises(TrainingDataError) as err:
        split(TrainingData(np.zeros((64, 64), np.float32), labels, name="signed"), InputSpec())
    text = str(err.value)
    assert "\n" not in text and "labels of signed contain the negative value -2" in text
