"""Edits of a prediction and labels painted since a snapshot, turned into training labels slab by slab."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_msd.training.corrections import copy_slabs, corrections, slabs, split_since


class _Recording:
    """A lazy array stand-in that records the index and size of every read (no ``__array__``)."""

    def __init__(self, data: np.ndarray):
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.keys: list = []
        self.sizes: list[int] = []

    def __getitem__(self, key):
        out = np.array(self._data[key], copy=True)
        self.keys.append(key)
        self.sizes.append(out.size)
        return out


def _pair(shape, seed=0, dtype=np.uint8, classes=4):
    """A random prediction (classes 1..K) and an edit of it: some pixels changed, some erased, some repainted
    with the predicted class."""
    rng = np.random.default_rng(seed)
    predicted = rng.integers(1, classes + 1, shape).astype(dtype)
    edited = predicted.copy()
    pick = rng.random(shape)
    edited[pick < 0.2] = rng.integers(0, classes + 1, shape).astype(dtype)[pick < 0.2]  # includes 0 and same
    edited[(pick >= 0.2) & (pick < 0.25)] = 0  # erased
    return edited, predicted


def _expected(edited, predicted):
    mask = (edited != predicted) & (edited != 0)
    return mask, np.where(mask, edited, 0)


def _as_image(indices, values, shape, dtype):
    out = np.zeros(shape, dtype)
    out[indices] = values
    return out


def _zarr(tmp_path, name, data, chunks):
    z = zarr.create_array(store=str(tmp_path / name), shape=data.shape, chunks=chunks, dtype=data.dtype)
    z[...] = data
    return z


# -- slabs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "pixels"),
    [
        ((10, 7), 21),
        ((10, 7), 20),
        ((10, 7), 1),
        ((10, 7), 10**6),
        ((5, 4, 3), 24),
        ((13,), 4),
        ((0, 5), 10),
    ],
)
def test_slabs_cover_the_first_axis_once_with_at_most_pixels_per_slab(shape, pixels):
    parts = list(slabs(shape, pixels))
    covered = np.zeros(shape[0], int)
    row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    for s in parts:
        assert s.step is None and 0 <= s.start < s.stop <= shape[0]
        covered[s] += 1
        assert (s.stop - s.start) * row <= max(pixels, row)  # at least one row, else at most `pixels`
    assert (covered == 1).all()
    if shape[0]:
        assert [s.start for s in parts] == sorted(s.start for s in parts)


def test_slabs_of_a_scalar_shape_raise():
    with pytest.raises(ValueError, match="at least one dimension"):
        list(slabs(()))


# -- corrections ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 37), (6, 19, 23)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_corrections_are_the_changed_nonzero_pixels_with_their_values(shape, dtype):
    edited, predicted = _pair(shape, seed=len(shape), dtype=dtype)
    mask, expected = _expected(edited, predicted)
    assert 0 < mask.sum() < mask.size and ((edited == 0) & (predicted != 0)).any()
    indices, values = corrections(edited, predicted)
    assert len(indices) == len(shape)
    assert all(i.dtype == np.intp and i.shape == values.shape for i in indices)
    assert values.dtype == edited.dtype
    assert values.size == mask.sum()  # every corrected pixel once
    assert set(zip(*indices)) == set(zip(*np.nonzero(mask)))
    np.testing.assert_array_equal(values, edited[indices])
    np.testing.assert_array_equal(_as_image(indices, values, shape, dtype), expected)
    assert (values != 0).all() and (values != predicted[indices]).all()


def test_applying_corrections_to_the_prediction_gives_the_edit_except_erasures():
    edited, predicted = _pair((30, 31), seed=3)
    indices, values = corrections(edited, predicted)
    applied = predicted.copy()
    applied[indices] = values
    erased = (edited == 0) & (predicted != 0)
    np.testing.assert_array_equal(applied[~erased], edited[~erased])
    np.testing.assert_array_equal(applied[erased], predicted[erased])  # erasing is not a correction


def test_erased_pixels_are_not_corrections():
    predicted = np.full((8, 9), 2, np.uint8)
    edited = predicted.copy()
    edited[2:5, 3:7] = 0
    indices, values = corrections(edited, predicted)
    assert values.size == 0 and all(i.size == 0 for i in indices)
    edited[0, 0] = 3
    indices, values = corrections(edited, predicted)
    assert [i.tolist() for i in indices] == [[0], [0]] and values.tolist() == [3]


@pytest.mark.parametrize("shape", [(12, 10), (3, 4, 5), (7,)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint32])
def test_identical_images_give_empty_corrections_of_the_right_dtype_and_arity(shape, dtype):
    labels = np.random.default_rng(0).integers(0, 5, shape).astype(dtype)
    indices, values = corrections(labels, labels.copy())
    assert len(indices) == len(shape)
    assert all(i.dtype == np.intp and i.shape == (0,) for i in indices)
    assert values.dtype == dtype and values.shape == (0,)
    out = labels.copy()
    out[indices] = values  # an empty correction is still usable
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize("shape", [(25, 17), (5, 11, 13)])
@pytest.mark.parametrize("pixels", [1, 2, 40])
def test_slab_by_slab_equals_one_slab(shape, pixels):
    edited, predicted = _pair(shape, seed=7)
    whole_idx, whole_val = corrections(edited, predicted, pixels=edited.size)
    idx, val = corrections(edited, predicted, pixels=pixels)
    assert len(idx) == len(whole_idx)
    for a, b in zip(idx, whole_idx):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(val, whole_val)


def test_corrections_read_one_slab_at_a_time():
    edited, predicted = _pair((20, 6, 5), seed=1)
    e, p = _Recording(edited), _Recording(predicted)
    pixels = 60  # two rows of 30
    indices, values = corrections(e, p, pixels=pixels)
    np.testing.assert_array_equal(
        _as_image(indices, values, edited.shape, edited.dtype), _expected(edited, predicted)[1]
    )
    for arr in (e, p):
        assert max(arr.sizes) <= pixels
        assert sum(arr.sizes) == edited.size  # each pixel read once
        assert all(isinstance(k, slice) for k in arr.keys)


@pytest.mark.parametrize("shape", [(3,), (1, 1)])
def test_tiny_images(shape):
    predicted = np.ones(shape, np.uint8)
    edited = np.full(shape, 2, np.uint8)
    indices, values = corrections(edited, predicted)
    assert values.tolist() == [2] * int(np.prod(shape))
    np.testing.assert_array_equal(_as_image(indices, values, shape, np.uint8), edited)


def test_corrections_of_zarr_arrays(tmp_path):
    edited, predicted = _pair((9, 20, 18), seed=5, dtype=np.uint16)
    ze = _zarr(tmp_path, "edited.zarr", edited, (2, 8, 8))
    zp = _zarr(tmp_path, "predicted.zarr", predicted, (3, 20, 9))
    indices, values = corrections(ze, zp, pixels=2 * 20 * 18)
    assert values.dtype == np.uint16
    np.testing.assert_array_equal(_as_image(indices, values, edited.shape, np.uint16), _expected(edited, predicted)[1])
    empty_idx, empty_val = corrections(ze, ze)
    assert empty_val.dtype == np.uint16 and len(empty_idx) == 3 and empty_val.size == 0


def test_corrections_of_dask_arrays():
    edited, predicted = _pair((30, 28), seed=6)
    de, dp = da.from_array(edited, chunks=(7, 10)), da.from_array(predicted, chunks=(11, 28))
    indices, values = corrections(de, dp, pixels=5 * 28)
    assert isinstance(values, np.ndarray) and all(isinstance(i, np.ndarray) for i in indices)
    np.testing.assert_array_equal(
        _as_image(indices, values, edited.shape, edited.dtype), _expected(edited, predicted)[1]
    )
    mixed_idx, mixed_val = corrections(de, predicted)  # dask against numpy
    np.testing.assert_array_equal(mixed_val, values)


def test_shape_mismatch_raises_one_line_naming_both_shapes():
    with pytest.raises(ValueError) as err:
        corrections(np.zeros((4, 5), np.uint8), np.zeros((4, 6), np.uint8))
    message = str(err.value)
    assert "(4, 5)" in message and "(4, 6)" in message and "\n" not in message


# -- split_since ---------------------------------------------------------------------------------------


def _since(shape=(24, 20), seed=0):
    """Labels at training time (snapshot) and now: strokes added, some repainted, some erased."""
    rng = np.random.default_rng(seed)
    snapshot = np.where(rng.random(shape) < 0.3, rng.integers(1, 4, shape), 0).astype(np.uint8)
    labels = snapshot.copy()
    pick = rng.random(shape)
    labels[pick < 0.15] = rng.integers(1, 4, shape).astype(np.uint8)[pick < 0.15]  # painted (some unchanged)
    labels[(pick >= 0.15) & (pick < 0.2)] = 0  # erased
    return labels, snapshot


def _check_split(labels, snapshot, new, kept, counts):
    changed = labels != snapshot
    np.testing.assert_array_equal(new, np.where(changed & (labels > 0), labels, 0))
    np.testing.assert_array_equal(kept, np.where(~changed & (labels > 0), labels, 0))
    assert counts == (int(np.count_nonzero(new)), int(np.count_nonzero(kept)))
    assert not ((new > 0) & (kept > 0)).any()
    np.testing.assert_array_equal((new + kept)[labels > 0], labels[labels > 0])
    erased = (labels == 0) & (snapshot > 0)
    assert erased.any() and (new[erased] == 0).all() and (kept[erased] == 0).all()


@pytest.mark.parametrize("shape", [(24, 20), (4, 12, 10)])
@pytest.mark.parametrize("pixels", [1, 37, 10**6])
def test_split_since_separates_new_from_kept_labels(shape, pixels):
    labels, snapshot = _since(shape, seed=len(shape))
    new, kept = np.full(shape, 9, np.uint8), np.full(shape, 9, np.uint8)  # stale values are overwritten
    counts = split_since(labels, snapshot, new, kept, pixels=pixels)
    assert counts[0] > 0 and counts[1] > 0
    _check_split(labels, snapshot, new, kept, counts)


def test_split_since_a_small_example():
    snapshot = np.array([[1, 1, 0, 2], [0, 0, 3, 3]], np.uint8)
    labels = np.array([[1, 2, 0, 0], [4, 0, 3, 3]], np.uint8)
    new, kept = np.zeros_like(labels), np.zeros_like(labels)
    assert split_since(labels, snapshot, new, kept) == (2, 3)
    assert new.tolist() == [[0, 2, 0, 0], [4, 0, 0, 0]]
    assert kept.tolist() == [[1, 0, 0, 0], [0, 0, 3, 3]]


def test_split_since_an_unchanged_image_is_all_kept():
    labels, _ = _since((10, 10))
    new, kept = np.zeros_like(labels), np.zeros_like(labels)
    assert split_since(labels, labels.copy(), new, kept) == (0, int(np.count_nonzero(labels)))
    assert not new.any()
    np.testing.assert_array_equal(kept, labels)


def test_split_since_writes_zarr_outputs(tmp_path):
    labels, snapshot = _since((6, 16, 14), seed=2)
    zl, zs = _zarr(tmp_path, "labels.zarr", labels, (2, 8, 8)), _zarr(tmp_path, "snap.zarr", snapshot, (3, 16, 7))
    new = zarr.create_array(store=str(tmp_path / "new.zarr"), shape=labels.shape, chunks=(1, 8, 8), dtype=np.uint8)
    kept = zarr.create_array(store=str(tmp_path / "kept.zarr"), shape=labels.shape, chunks=(4, 16, 14), dtype=np.uint8)
    counts = split_since(zl, zs, new, kept, pixels=16 * 14)
    reopened = zarr.open_array(str(tmp_path / "new.zarr"), mode="r")
    _check_split(labels, snapshot, np.asarray(reopened[...]), np.asarray(kept[...]), counts)


def test_split_since_of_dask_inputs():
    labels, snapshot = _since((20, 18), seed=4)
    new, kept = np.zeros_like(labels), np.zeros_like(labels)
    counts = split_since(
        da.from_array(labels, chunks=(6, 9)), da.from_array(snapshot, chunks=5), new, kept, pixels=3 * 18
    )
    _check_split(labels, snapshot, new, kept, counts)


@pytest.mark.parametrize("pixels", [1, 50, 90])
def test_split_since_reads_at_most_a_slab_at_a_time(pixels):
    labels, snapshot = _since((15, 9, 5), seed=5)
    rl, rs = _Recording(labels), _Recording(snapshot)
    new, kept = np.zeros_like(labels), np.zeros_like(labels)
    counts = split_since(rl, rs, new, kept, pixels=pixels)
    _check_split(labels, snapshot, new, kept, counts)
    row = 9 * 5
    for arr in (rl, rs):
        assert max(arr.sizes) <= max(pixels, row)
        assert sum(arr.sizes) == labels.size
        rows = np.zeros(labels.shape[0], int)
        for key in arr.keys:
            assert isinstance(key, slice)
            rows[key] += 1
        assert (rows == 1).all()


def test_split_since_shape_mismatches_raise():
    a = np.zeros((4, 5), np.uint8)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        split_since(a, np.zeros((5, 4), np.uint8), np.zeros_like(a), np.zeros_like(a))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4\)"):
        split_since(a, a.copy(), np.zeros_like(a), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(3, 5\)"):
        split_since(a, a.copy(), np.zeros((3, 5), np.uint8), np.zeros_like(a))


# -- copy_slabs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pixels", [1, 33, 10**6])
def test_copy_slabs_copies_exactly(tmp_path, pixels):
    source = np.random.default_rng(pixels).integers(0, 2**16, (7, 11, 6)).astype(np.uint16)
    out = np.zeros_like(source)
    assert copy_slabs(source, out, pixels=pixels) is out
    np.testing.assert_array_equal(out, source)
    z = zarr.create_array(store=str(tmp_path / "copy.zarr"), shape=source.shape, chunks=(2, 4, 6), dtype=np.uint16)
    copy_slabs(da.from_array(source, chunks=(3, 5, 6)), z, pixels=pixels)
    np.testing.assert_array_equal(np.asarray(z[...]), source)


def test_copy_slabs_reads_slab_by_slab_and_refuses_other_shapes():
    source = _Recording(np.arange(8 * 10, dtype=np.int32).reshape(8, 10))
    out = np.zeros((8, 10), np.int32)
    copy_slabs(source, out, pixels=20)
    np.testing.assert_array_equal(out, source._data)
    assert source.sizes == [20, 20, 20, 20]
    with pytest.raises(ValueError, match=r"\(8, 10\).*\(8, 9\)"):
        copy_slabs(source, np.zeros((8, 9), np.int32))
