"""Connected components block by block: equal to a whole-volume labelling for any block shape."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

from napari_msd.objects import iter_components, label_components
from napari_msd.objects.blocks import LowHalo, block_slices, choose_block_shape, iter_blocks

from helpers.arrays import CountingArray
from helpers.objects import assert_same_objects, class_blobs, reference_components

CASES_2D = [(1, (5, 5)), (1, (7, 3)), (1, (1, 1)), (2, (4, 6)), (2, (2, 9)), (2, (48, 41))]
CASES_3D = [(1, (5, 5, 5)), (1, (3, 7, 4)), (2, (4, 4, 6)), (3, (5, 5, 5)), (3, (2, 3, 4)), (3, (14, 21, 19))]


@pytest.mark.parametrize(("connectivity", "block"), CASES_2D)
def test_2d_equals_a_whole_image_labelling(connectivity, block):
    labels = class_blobs((48, 41), seed=1)
    found = label_components(labels, connectivity=connectivity, block_shape=block)
    reference = reference_components(labels, connectivity)
    assert found.n_objects == reference.max() > 30
    assert_same_objects(found.labels, reference)
    assert found.labels.dtype == np.uint32


@pytest.mark.parametrize(("connectivity", "block"), CASES_3D)
def test_3d_equals_a_whole_volume_labelling(connectivity, block):
    labels = class_blobs((14, 21, 19), seed=2)
    found = label_components(labels, connectivity=connectivity, block_shape=block)
    reference = reference_components(labels, connectivity)
    assert found.n_objects == reference.max() > 20
    assert_same_objects(found.labels, reference)


def test_sizes_boxes_and_classes_are_those_of_the_whole_volume():
    labels = class_blobs((12, 30, 26), seed=3)
    found = label_components(labels, block_shape=(5, 7, 6))
    objects = found.labels
    for i, box in enumerate(ndimage.find_objects(objects), start=1):
        assert found.sizes[i] == (objects == i).sum()
        np.testing.assert_array_equal(found.boxes[i], [[s.start for s in box], [s.stop for s in box]])
        assert np.unique(labels[objects == i]).tolist() == [found.classes[i]]
    assert found.classes[0] == 0 and found.sizes[0] == 0


def test_an_object_winding_through_many_blocks_is_one_object():
    """A U whose arms meet only in the last block row, and a spiral crossing a dozen blocks."""
    labels = np.zeros((40, 40), np.uint8)
    labels[2:38, 3] = labels[2:38, 30] = 1  # the arms, each crossing 9 blocks
    labels[37, 3:31] = 1  # joined at the bottom only
    labels[2:30, 10:25:2] = 2  # a comb of class 2: teeth joined by one bar at the top
    labels[2, 10:25] = 2
    found = label_components(labels, block_shape=(4, 4))
    assert found.n_objects == 2
    assert sorted(found.classes[1:].tolist()) == [1, 2]


def test_corner_contacts_join_only_with_full_connectivity():
    """Squares meeting at one corner exactly where four blocks meet (and one crossing a block edge)."""
    labels = np.zeros((16, 16), np.uint8)
    labels[4:8, 4:8] = labels[8:12, 8:12] = 1  # the corner (7, 7)-(8, 8) is the corner of blocks of 8
    labels[0:3, 12:15] = labels[3:6, 9:12] = 1  # corner contact (2, 12)-(3, 11), both in block (0, 1)
    faces = label_components(labels, connectivity=1, block_shape=(8, 8))
    full = label_components(labels, connectivity=2, block_shape=(8, 8))
    assert faces.n_objects == 4 and full.n_objects == 2
    volume = np.zeros((8, 8, 8), np.uint8)
    volume[2:4, 2:4, 2:4] = volume[4:6, 4:6, 4:6] = 1  # touching at the corner of 8 blocks of 4
    assert label_components(volume, connectivity=2, block_shape=(4, 4, 4)).n_objects == 2  # edges only
    assert label_components(volume, connectivity=3, block_shape=(4, 4, 4)).n_objects == 1


def test_touching_objects_of_different_classes_stay_apart_and_classes_can_be_chosen():
    labels = np.zeros((10, 12), np.uint8)
    labels[2:8, 1:6] = 1
    labels[2:8, 6:11] = 2  # touches class 1 along a whole edge
    labels[0, :] = 3
    found = label_components(labels, block_shape=(3, 4))
    assert found.n_objects == 3
    only = label_components(labels, classes=[2, 3], block_shape=(3, 4))
    assert only.n_objects == 2 and sorted(only.classes[1:].tolist()) == [2, 3]
    assert (only.labels[labels == 1] == 0).all()


def test_min_size_counts_an_object_over_all_its_blocks():
    labels = np.zeros((12, 12), np.uint8)
    labels[2:6, 2:6] = 1  # 16 pixels, 4 in each of four blocks of 4x4
    labels[9, 9] = labels[9, 11] = 1  # two single pixels
    found = label_components(labels, min_size=5, block_shape=(4, 4))
    assert found.n_objects == 1 and found.dropped == 2
    assert found.sizes[1] == 16 and (found.labels == 1).sum() == 16
    assert found.labels[9, 9] == found.labels[9, 11] == 0


def test_numbering_is_consecutive_and_independent_of_the_blocks_only_up_to_renumbering():
    labels = class_blobs((30, 30), seed=4)
    a = label_components(labels, block_shape=(30, 30), min_size=3).labels
    b = label_components(labels, block_shape=(4, 7), min_size=3).labels
    assert_same_objects(a, b)
    assert np.array_equal(np.unique(a), np.arange(a.max() + 1))
    assert np.array_equal(np.unique(b), np.arange(b.max() + 1))


def test_zarr_and_dask_in_zarr_out_reading_one_block_at_a_time(tmp_path):
    labels = class_blobs((10, 24, 20), seed=5)
    source = zarr.create_array(tmp_path / "pred.zarr", shape=labels.shape, chunks=(5, 8, 10), dtype="uint8")
    source[...] = labels
    made = []

    def factory(shape, dtype):
        made.append((shape, dtype))
        return zarr.create_array(tmp_path / "objects.zarr", shape=shape, chunks=(5, 8, 10), dtype=dtype)

    found = label_components(source, out=factory, block_shape=(5, 8, 10))
    assert made == [(labels.shape, np.dtype(np.uint32))]
    assert_same_objects(zarr.open_array(tmp_path / "objects.zarr")[...], reference_components(labels, 1))
    lazy = label_components(da.from_array(labels, chunks=(5, 12, 10)))  # block shape from dask's chunks
    assert_same_objects(lazy.labels, found.labels[...])
    counting = CountingArray(labels, chunks=(5, 8, 10))
    seen = []
    events = list(
        iter_components(
            counting, out=None, on_block=lambda i, s, objects: seen.append(objects.shape), block_shape=(5, 8, 10)
        )
    )
    assert max(counting.reads) == 5 * 8 * 10  # never more than one block per read
    assert len(seen) == 2 * 3 * 2 and [e.stage for e in events].count("write") == 12
    assert events[-1].done == events[-1].total == 12


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="integers"):
        label_components(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="connectivity"):
        label_components(np.zeros((4, 4), np.uint8), connectivity=3)
    with pytest.raises(ValueError, match="cannot hold"):
        label_components(np.ones((4, 4), np.uint8), out=np.zeros((4, 4), np.float32))
    empty = label_components(np.zeros((6, 5), np.uint8), block_shape=(2, 2))
    assert empty.n_objects == 0 and not empty.labels.any()


@pytest.mark.parametrize(("shape", "block", "width"), [((9, 10), (2, 3), 4), ((7, 8, 9), (3, 3, 4), 1)])
def test_low_halo_gives_the_layers_before_each_block(shape, block, width):
    volume = np.random.default_rng(0).integers(1, 100, shape)
    halo = LowHalo(shape, block, width)
    for index, slices in iter_blocks(shape, block):
        ext, lo = halo.extend(index, volume[slices])
        expected = volume[tuple(slice(s.start - k, s.stop) for s, k in zip(slices, lo))]
        assert lo == tuple(min(width, s.start) for s in slices)
        np.testing.assert_array_equal(ext, expected)
    assert not halo._kept  # everything dropped after its last user
    assert block_slices((1, 2), (4, 4), (6, 9)) == (slice(4, 6), slice(8, 9))
    assert choose_block_shape((100, 2048, 2048), (1, 512, 512)) == (16, 512, 512)
