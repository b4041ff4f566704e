"""Watershed split of touching objects, per object on its box: touching balls split, convex blobs stay whole,
and the result equals a whole-volume watershed for any block shape."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from napari_msd.objects import iter_boxes, label_components, run_to_end, split_object, split_objects
from napari_msd.objects.split import Boxes

from helpers.objects import assert_same_objects, ball


def _pieces(mask, **kw):
    pieces, n = split_object(mask, **kw)
    assert set(np.unique(pieces[mask])) == set(range(1, n + 1)) and not pieces[~mask].any()
    return pieces, n


def test_two_touching_disks_and_balls_split_in_two():
    disks = ball((40, 60), (20, 20), 10) | ball((40, 60), (20, 37), 10)
    pieces, n = _pieces(disks)
    assert n == 2
    assert pieces[20, 20] != pieces[20, 37]
    left = pieces == pieces[20, 20]
    assert abs(left.sum() - disks.sum() / 2) < 0.05 * disks.sum()  # cut near the neck
    balls = ball((24, 24, 44), (12, 12, 13), 8) | ball((24, 24, 44), (12, 12, 28), 8)
    assert _pieces(balls)[1] == 2


@pytest.mark.parametrize(
    "mask",
    [
        ball((30, 30), (15, 15), 11),
        ball((24, 24, 24), (12, 12, 12), 9),
        ((np.indices((40, 80)) - np.array([20, 40])[:, None, None]) ** 2 / np.array([144, 900])[:, None, None]).sum(0)
        <= 1,  # an ellipse: its ridge has several tiny maxima
        np.pad(np.ones((20, 20), bool), 5),
    ],
    ids=["disk", "ball", "ellipse", "square"],
)
def test_a_convex_blob_stays_one(mask):
    pieces, n = _pieces(mask)
    assert n == 1


def test_a_boundary_map_splits_along_the_predicted_boundary():
    blob = ball((40, 60), (20, 30), 15)  # one convex blob: the distance transform keeps it whole
    boundary = np.full(blob.shape, 0.1, np.float32)
    boundary[:, 29:31] = 0.9  # a membrane across it
    pieces, n = _pieces(blob, boundary=boundary)
    assert n == 2 and pieces[20, 20] != pieces[20, 40]
    as_uint8 = (boundary * 255).astype(np.uint8)  # stored probabilities: value / 255
    assert _pieces(blob, boundary=as_uint8)[1] == 2
    assert _pieces(blob, boundary=np.full(blob.shape, 0.1, np.float32))[1] == 1
    assert _pieces(blob, boundary=np.full(blob.shape, 0.9, np.float32))[1] == 1  # no seed at all: kept whole


def _pairs_volume(shape, seed):
    """Well separated pairs of touching disks / balls (some pairs too fused to split)."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, bool)
    step = 28
    for corner in np.ndindex(*(s // step for s in shape)):
        centre = [c * step + 12 for c in corner]
        r = int(rng.integers(6, 9))
        other = [*centre[:-1], centre[-1] + int(rng.integers(8, 13))]
        volume |= ball(shape, centre, r) | ball(shape, other, r - 1)
    return volume


def _whole_volume_watershed(volume, h=2.0):
    """The same split as one watershed of the whole volume (valid because the objects are far apart)."""
    inner = (slice(1, -1),) * volume.ndim
    distance = ndimage.distance_transform_edt(np.pad(volume, 1))
    peaks = h_maxima(distance, h)[inner].astype(bool) & volume
    markers, _ = ndimage.label(peaks, ndimage.generate_binary_structure(volume.ndim, volume.ndim))
    return watershed(-distance[inner], markers, mask=volume, connectivity=volume.ndim)


@pytest.mark.parametrize("block", [(84, 84), (28, 28), (10, 17), (6, 6)])
def test_per_object_split_equals_a_whole_image_watershed(block):
    volume = _pairs_volume((84, 84), seed=0)
    objects = label_components(volume.astype(np.uint8)).labels
    reference = _whole_volume_watershed(volume)
    result = split_objects(objects, block_shape=block)
    assert result.n_objects == reference.max() > objects.max()  # some pairs were split
    assert_same_objects(result.labels, reference)
    for piece in range(1, result.n_objects + 1):  # each piece lies in the object it came from
        assert np.unique(objects[result.labels == piece]).tolist() == [result.parent[piece]]


def test_per_object_split_equals_a_whole_volume_watershed_in_3d(tmp_path):
    volume = _pairs_volume((28, 28, 56), seed=1)
    objects = label_components(volume.astype(np.uint8)).labels
    out = zarr.create_array(tmp_path / "split.zarr", shape=volume.shape, chunks=(7, 14, 14), dtype="uint32")
    result = split_objects(objects, block_shape=(7, 14, 14), out=out)
    assert result.labels is out
    assert_same_objects(out[...], _whole_volume_watershed(volume))


def test_objects_with_a_box_over_max_pixels_are_kept_whole():
    volume = _pairs_volume((56, 56), seed=2)
    objects = label_components(volume.astype(np.uint8)).labels
    result = split_objects(objects, block_shape=(20, 20), max_pixels=10)
    assert result.too_large == objects.max() and result.n_objects == objects.max()
    assert_same_objects(result.labels, objects)


def test_boxes_found_block_by_block_are_the_objects_boxes():
    objects = label_components(_pairs_volume((56, 56), seed=3).astype(np.uint8)).labels
    objects[objects == 2] = 7  # any ids, not only 1..n
    boxes = run_to_end(iter_boxes(objects, block_shape=(9, 13)))
    found = ndimage.find_objects(objects)
    expected = [(i, box) for i, box in enumerate(found, start=1) if box is not None]
    assert boxes.ids.tolist() == [i for i, _ in expected]
    for row, (_, box) in enumerate(expected):
        assert boxes.start[row].tolist() == [s.start for s in box]
        assert boxes.stop[row].tolist() == [s.stop for s in box]
    given = split_objects(objects, boxes=boxes, block_shape=(9, 13)).labels
    assert_same_objects(given, split_objects(objects, block_shape=(56, 56)).labels)
    assert isinstance(Boxes.from_array(np.zeros((1, 2, 2), np.int64)).ids, np.ndarray)
