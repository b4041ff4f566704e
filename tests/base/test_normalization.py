"""Robust percentile normalisation: every dtype maps its percentiles to 0 and 1, big volumes are sampled."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msd.base.normalization import Normalization, estimate_normalization

RNG = np.random.default_rng(0)


def _image(dtype) -> np.ndarray:
    shape = (3, 60, 70)
    if dtype == np.uint8:
        return RNG.integers(0, 256, shape).astype(np.uint8)
    if dtype == np.uint16:
        return RNG.integers(0, 60000, shape).astype(np.uint16)
    if dtype == np.int16:
        return RNG.normal(-200, 3000, shape).clip(-32768, 32767).astype(np.int16)
    return RNG.normal(-3.5, 0.8, shape).astype(np.float32)  # a tomogram: mostly negative floats


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_percentiles_map_to_zero_and_one(dtype):
    image = _image(dtype)
    norm = estimate_normalization([image])
    out = norm(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    low, high = np.percentile(out, [1, 99])
    assert low == pytest.approx(0.0, abs=1e-4)
    assert high == pytest.approx(1.0, abs=1e-4)
    # values beyond the percentiles are kept, not clipped
    assert out.min() < -1e-3 and out.max() > 1 + 1e-3
    expected = (image.astype(np.float64) - norm.low) / (norm.high - norm.low)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    if dtype == np.float32:
        assert norm.low < norm.high < 0


def test_custom_percentiles():
    image = _image(np.uint16)
    norm = estimate_normalization([image], percentiles=(5, 95))
    assert norm.percentiles == (5.0, 95.0)
    np.testing.assert_allclose(np.percentile(norm(image), [5, 95]), [0, 1], atol=1e-4)


def test_percentiles_are_taken_over_all_images_together():
    a = RNG.uniform(0, 100, (50, 50)).astype(np.float32)
    b = RNG.uniform(100, 200, (50, 50)).astype(np.float32)
    norm = estimate_normalization([a, b])
    both = np.concatenate([a.ravel(), b.ravel()])
    assert norm.low == pytest.approx(np.percentile(both, 1), rel=1e-6)
    assert norm.high == pytest.approx(np.percentile(both, 99), rel=1e-6)


def test_large_lazy_volume_is_sampled_not_read(counting_array):
    # 16.8 M voxels, four times more than the 2 M value budget allows to read whole
    rng = np.random.default_rng(1)
    data = rng.gamma(2.0, 300.0, size=(64, 512, 512)).astype(np.uint16)
    lazy = counting_array(data)
    norm = estimate_normalization([lazy])
    assert 0 < lazy.elements_read <= 2_500_000, lazy.elements_read
    assert max(lazy.reads) < data.size / 8  # blocks, never the volume
    exact_low, exact_high = np.percentile(data, [1, 99])
    span = exact_high - exact_low
    assert abs(norm.low - exact_low) < 0.01 * span
    assert abs(norm.high - exact_high) < 0.01 * span


def test_small_budget_bounds_reads(counting_array):
    data = np.random.default_rng(2).normal(0, 1, size=(1000, 1000)).astype(np.float32)
    lazy = counting_array(data)
    norm = estimate_normalization([lazy], budget=20_000)
    assert lazy.elements_read < 40_000
    assert norm.low == pytest.approx(np.percentile(data, 1), abs=0.1)
    assert norm.high == pytest.approx(np.percentile(data, 99), abs=0.1)


def test_sampling_is_reproducible_with_a_seed(counting_array):
    data = np.random.default_rng(3).normal(0, 1, size=(1000, 1000)).astype(np.float32)
    a = estimate_normalization([counting_array(data)], budget=20_000, seed=5)
    b = estimate_normalization([counting_array(data)], budget=20_000, seed=5)
    assert a == b


def test_non_finite_values_are_ignored():
    image = RNG.normal(10, 2, (40, 40)).astype(np.float32)
    image[:5] = np.nan
    image[5, :3] = np.inf
    norm = estimate_normalization([image])
    finite = image[np.isfinite(image)]
    assert norm.low == pytest.approx(np.percentile(finite, 1), rel=1e-6)
    assert norm.high == pytest.approx(np.percentile(finite, 99), rel=1e-6)


def test_all_nan_image_is_refused_with_one_line():
    with pytest.raises(ValueError) as err:
        estimate_normalization([np.full((8, 8), np.nan, np.float32)])
    assert "\n" not in str(err.value) and "finite" in str(err.value)


def test_constant_and_nearly_constant_images_give_finite_values():
    constant = np.full((20, 20), 7, np.uint8)
    out = estimate_normalization([constant])(constant)
    assert np.isfinite(out).all()
    mostly = np.zeros((20, 20), np.uint8)
    mostly[0, 0] = 255  # 1st and 99th percentiles equal: fall back to the full range
    norm = estimate_normalization([mostly])
    assert (norm.low, norm.high) == (0.0, 255.0)
    assert np.isfinite(norm(mostly)).all()


def test_round_trip_through_plain_data():
    norm = Normalization(-3.25, 1.5, (0.5, 99.5))
    data = norm.to_dict()
    assert data == {"method": "percentile", "low": -3.25, "high": 1.5, "percentiles": [0.5, 99.5]}
    assert Normalization.from_dict(data) == norm
    x = np.linspace(-5, 5, 11)
    np.testing.assert_array_equal(Normalization.from_dict(data)(x), norm(x))
    with pytest.raises(ValueError) as err:
        Normalization.from_dict({"method": "zscore", "low": 0, "high": 1})
    assert "\n" not in str(err.value)
