"""The random-forest pixel classifier: features, fitting from sparse strokes, probabilities, regions, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from napari_msd.training.forest import (
    CONTEXT,
    FEATURES_PER_SIGMA,
    SIGMAS,
    PixelForest,
    context_radius,
    feature_names,
    filter_features,
)
from napari_msd.training.sampling import TrainingData, TrainingDataError

FAST = {"n_estimators": 15, "threads": 1}


def halves(shape=(64, 96), seed=0, noise=15.0):
    """A dark left half (class 1) and a bright right half (class 2), with one stroke of each class."""
    rng = np.random.default_rng(seed)
    h, w = shape[-2:]
    truth = np.ones(shape, np.uint8)
    truth[..., w // 2 :] = 2
    image = np.where(truth == 1, 60.0, 170.0) + rng.normal(0, noise, shape)
    strokes = np.zeros(shape, np.uint8)
    strokes[..., h // 3, 5 : w // 2 - 8] = 1
    strokes[..., 2 * h // 3, w // 2 + 8 : w - 5] = 2
    return image.astype(np.float32), strokes, truth


class RecordingArray:
    """A lazy-array stand-in wrapping a zarr array: records the key of every read."""

    def __init__(self, array):
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.keys: list = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self._array[key]


def _plane(key) -> int:
    """The one plane a read's first key asks for (an index, or a slice one plane deep)."""
    if isinstance(key, slice):
        assert key.stop - key.start == 1 and key.step in (None, 1)
        return int(key.start)
    assert isinstance(key, int | np.integer)
    return int(key)


@pytest.fixture(scope="module")
def task2d():
    image, strokes, truth = halves()
    return image, strokes, truth, PixelForest.fit([TrainingData(image, strokes)], **FAST)


def test_features_shape_and_names():
    """The values are held to the written-out formulas below; here the layout the forest's callers rely on."""
    assert len(feature_names()) == 1 + len(SIGMAS) * len(FEATURES_PER_SIGMA) == 49
    img = np.random.default_rng(3).random((40, 50)).astype(np.float32) * 100
    feats = filter_features(img)
    assert feats.shape == (40, 50, 49) and feats.dtype == np.float32 and feats.flags.c_contiguous
    names = feature_names()
    np.testing.assert_array_equal(feats[..., names.index("raw")], img)
    np.testing.assert_array_equal(feats[..., names.index("gaussian_1")], ndi.gaussian_filter(img, 1.0))


def test_context_radius_gives_exact_crop_features():
    assert CONTEXT == context_radius(SIGMAS) == 60  # 40 (derivative at sigma 10) + 20 (its smoothing at 5)
    img = np.random.default_rng(4).random((200, 210)).astype(np.float32)
    crop = filter_features(img[70 - CONTEXT : 120 + CONTEXT, 80 - CONTEXT : 130 + CONTEXT])
    np.testing.assert_array_equal(crop[CONTEXT:-CONTEXT, CONTEXT:-CONTEXT], filter_features(img)[70:120, 80:130])


def test_two_regions_probabilities_and_labels(task2d):
    image, strokes, truth, forest = task2d
    assert forest.n_classes == 2 and forest.classes_present == (1, 2)
    assert forest.n_fit_pixels == int((strokes > 0).sum())
    proba = forest.predict_proba(image)
    assert proba.shape == (2,) + image.shape and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1, atol=1e-5)
    unpainted = strokes == 0
    assert ((proba.argmax(0) + 1) == truth)[unpainted].mean() > 0.95
    labels = forest.predict(image)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {1, 2}
    assert (labels == truth)[unpainted].mean() > 0.95


def test_unpainted_classes_get_zero_probability():
    image, strokes, _ = halves()
    forest = PixelForest.fit(TrainingData(image, strokes), n_classes=4, **FAST)
    proba = forest.predict_proba(image)
    assert forest.n_classes == 4 and forest.classes_present == (1, 2)
    assert proba.shape[0] == 4 and not proba[2:].any()
    skipped = np.where(strokes == 2, 3, strokes).astype(np.uint8)  # classes 1 and 3 painted, 2 never
    forest = PixelForest.fit(TrainingData(image, skipped), **FAST)
    proba = forest.predict_proba(image)
    assert forest.n_classes == 3 and not proba[1].any()
    assert set(np.unique(forest.predict(image))) <= {1, 3}


def test_volume_with_strokes_on_one_slice_predicts_the_others():
    image, strokes, truth = halves(shape=(4, 48, 80), seed=1)
    strokes[[0, 2, 3]] = 0
    forest = PixelForest.fit([TrainingData(image, strokes, "vol")], **FAST)
    for z in (0, 2, 3):
        assert (forest.predict(image[z]) == truth[z]).mean() > 0.95


def test_lazy_image_is_read_only_on_labeled_slices(tmp_path):
    image, strokes, truth = halves(shape=(5, 48, 80), seed=2)
    strokes[[0, 1, 4]] = 0  # labels on slices 2 and 3
    stored = zarr.open_array(
        str(tmp_path / "image.zarr"), mode="w", shape=image.shape, chunks=(1, 48, 80), dtype=image.dtype
    )
    stored[:] = image
    lazy = RecordingArray(stored)
    forest = PixelForest.fit([TrainingData(lazy, strokes)], **FAST)
    assert lazy.keys and {_plane(key[0]) for key in lazy.keys} == {2, 3}  # one slice at a time
    lazy.keys.clear()
    region = forest.predict_region(lazy, 4, 10, 30, 20, 60)
    assert {_plane(key[0]) for key in lazy.keys} == {4}
    assert region.shape == (2, 20, 40)
    assert ((region.argmax(0) + 1) == truth[4, 10:30, 20:60]).mean() > 0.95


def test_predict_region_equals_crop_of_whole_plane():
    image, strokes, _ = halves(shape=(200, 230), seed=5, noise=40.0)  # noisy: probabilities vary per pixel
    forest = PixelForest.fit([TrainingData(image, strokes)], **FAST)
    whole = forest.predict_proba(image)
    for y0, y1, x0, x1 in [(80, 120, 90, 150), (0, 30, 200, 230), (150, 200, 0, 64), (0, 200, 0, 230)]:
        region = forest.predict_region(image, None, y0, y1, x0, x1)
        np.testing.assert_allclose(region, whole[:, y0:y1, x0:x1], atol=1e-5)
    volume = np.stack([image[::-1], image])
    np.testing.assert_allclose(forest.predict_region(volume, 1, 80, 120, 90, 150), whole[:, 80:120, 90:150], atol=1e-5)
    forest.tile_pixels = 3000  # row bands of 13 rows, each with exact context
    np.testing.assert_allclose(forest.predict_proba(image), whole, atol=1e-5)


def test_max_per_class_caps_and_is_seeded():
    image, _, truth = halves(shape=(64, 96), seed=6)
    dense = truth.copy()
    dense[:, 40:56] = 0  # 2 x ~2500 labeled pixels
    forest = PixelForest.fit([TrainingData(image, dense)], max_per_class=300, **FAST)
    assert forest.n_fit_pixels == 600 and forest.classes_present == (1, 2)
    again = PixelForest.fit([TrainingData(image, dense)], max_per_class=300, **FAST)
    np.testing.assert_array_equal(forest.predict_proba(image), again.predict_proba(image))
    small = dense.copy()
    small[:, :20] = 0  # class 1 now has fewer than the cap: all of it is kept
    n1 = int((small == 1).sum())
    assert PixelForest.fit([TrainingData(image, small)], max_per_class=n1 + 1, **FAST).n_fit_pixels == n1 + n1 + 1
    split = np.stack([dense, dense])  # the cap is over all slices and images together
    assert (
        PixelForest.fit(
            [TrainingData(np.stack([image, image]), split), TrainingData(image, dense)], max_per_class=500, **FAST
        ).n_fit_pixels
        == 1000
    )


def _bad_inputs():
    image, strokes, _ = halves(shape=(32, 48))
    one_class = np.where(strokes == 2, 0, strokes).astype(np.uint8)
    return {
        "no labels": ([TrainingData(image, np.zeros_like(strokes))], {}, "no labeled pixel"),
        "nothing given": ([], {}, "no labeled pixel"),
        "one class": ([TrainingData(image, one_class)], {}, "only class 1"),
        "shape mismatch": ([TrainingData(image, strokes[:, :40])], {}, "differ in shape"),
        "rgb": ([TrainingData(np.stack([image] * 3, axis=-1), strokes)], {}, "looks RGB"),
        "4d": ([TrainingData(image[None, None], strokes[None, None])], {}, "grey YX or ZYX"),
        "float labels": ([TrainingData(image, strokes.astype(np.float32))], {}, "must be integers"),
        "too few classes": ([TrainingData(image, strokes)], {"n_classes": 1}, "classes are defined"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_inputs_raise_one_line(case):
    data, kwargs, message = _bad_inputs()[case]
    with pytest.raises(ValueError, match=message) as err:
        PixelForest.fit(data, **kwargs, **FAST)
    assert isinstance(err.value, TrainingDataError) and "\n" not in str(err.value)


def test_bad_prediction_inputs_raise(task2d):
    image, _, _, forest = task2d
    with pytest.raises(ValueError, match="one 2D plane"):
        forest.predict_proba(image[None])
    with pytest.raises(ValueError, match="outside"):
        forest.predict_region(image, None, 0, 100, 0, 10)
    with pytest.raises(ValueError, match="slice z=3"):
        forest.predict_region(np.stack([image, image]), 3, 0, 10, 0, 10)


def test_pickle_round_trip(task2d):
    image, _, _, forest = task2d
    clone = pickle.loads(pickle.dumps(forest))
    assert (clone.n_classes, clone.classes_present, clone.n_fit_pixels) == (2, (1, 2), forest.n_fit_pixels)
    np.testing.assert_array_equal(clone.predict_proba(image), forest.predict_proba(image))


def _features_by_formula(img: np.ndarray) -> np.ndarray:
    """The 49 features written out plainly with scipy and numpy (the specification :func:`filter_features` meets)."""
    img = img.astype(np.float32)
    planes = [img]
    for s in SIGMAS:
        g = ndi.gaussian_filter(img, s)
        gy, gx = ndi.gaussian_filter(img, s, order=(1, 0)), ndi.gaussian_filter(img, s, order=(0, 1))
        hyy, hxy, hxx = (ndi.gaussian_filter(img, s, order=o) for o in ((2, 0), (1, 1), (0, 2)))
        syy, sxy, sxx = (ndi.gaussian_filter(p, 0.5 * s) for p in (gy * gy, gx * gy, gx * gx))
        planes += [g, hxx + hyy, np.sqrt(gx * gx + gy * gy), g - ndi.gaussian_filter(img, 0.66 * s)]
        for a, b, c in ((syy, sxy, sxx), (hyy, hxy, hxx)):
            mean, rad = 0.5 * (a + c), np.sqrt((0.5 * (a - c)) ** 2 + b * b)
            planes += [mean + rad, mean - rad]
    return np.stack(planes, axis=-1)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_features_equal_the_formulas_bit_for_bit_whatever_the_threads(threads):
    img = np.random.default_rng(5).random((61, 47)).astype(np.float32) * 200
    np.testing.assert_array_equal(filter_features(img, threads=threads), _features_by_formula(img))
    uint8 = (img).astype(np.uint8)
    np.testing.assert_array_equal(filter_features(uint8, threads=threads), _features_by_formula(uint8))


def test_features_of_a_non_contiguous_view():
    img = np.random.default_rng(6).random((50, 80)).astype(np.float32)
    view = img[:, ::2]
    np.testing.assert_array_equal(filter_features(view), _features_by_formula(np.ascontiguousarray(view)))
