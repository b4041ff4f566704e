"""Uncertainty measures and the review queue of uncertain regions: known values, brute-force tile means."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from napari_msd.inference.uncertainty import (
    MEMBER_MEASURES,
    UNCERTAINTY_MEASURES,
    RegionScores,
    disagreement,
    entropy,
    margin,
    region_center,
    to_uint8,
    uncertainty,
)


def test_entropy_is_one_for_uniform_zero_for_one_hot_and_known_for_two_classes():
    assert np.allclose(entropy(np.full((5, 3, 4), 0.2)), 1)
    one_hot = np.zeros((4, 6), np.float32)
    one_hot[2] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 * log 0 must not warn
        h = entropy(one_hot)
    assert h.dtype == np.float32 and h.shape == (6,) and not np.isnan(h).any() and (h == 0).all()
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    h = entropy(np.array([[0.25, 0.5], [0.75, 0.5]]))
    assert h[0] == pytest.approx(expected, rel=1e-6) and h[1] == pytest.approx(1)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3)
    assert entropy(np.array([[0.5], [0.25], [0.25]], np.float32))[0] == pytest.approx(expected, rel=1e-6)


def test_margin_known_values():
    p = np.array([[0.7, 0.5, 1.0, 0.2], [0.2, 0.5, 0.0, 0.3], [0.1, 0.0, 0.0, 0.5]], np.float32)
    m = margin(p)
    assert m.dtype == np.float32 and m.shape == (4,)
    assert np.allclose(m, [0.5, 1.0, 0.0, 0.8])


def test_dispatch_uint8_and_bad_inputs():
    p = np.array([[0.1, 0.6], [0.9, 0.4]])
    assert set(UNCERTAINTY_MEASURES) == {"entropy", "margin"}
    assert np.array_equal(uncertainty(p), entropy(p)) and np.array_equal(uncertainty(p, "margin"), margin(p))
    with pytest.raises(ValueError, match="choose one of entropy, margin"):
        uncertainty(p, "variance")
    for bad in (np.ones((1, 4)), np.ones(())):
        with pytest.raises(ValueError, match="2 classes"):
            entropy(bad)
        with pytest.raises(ValueError, match="2 classes"):
            margin(bad)
    u8 = to_uint8(np.array([0.0, 0.5, 1 / 255 * 0.6, 1.0, 1.2, -0.1]))
    assert u8.dtype == np.uint8 and u8.tolist() == [0, 128, 1, 255, 255, 0]


def test_region_center():
    assert region_center((slice(3, 4), slice(0, 10), slice(5, 8))) == (3.0, 4.5, 6.0)


def _tile_means(field: np.ndarray, t: int) -> dict[tuple[int, int, int], float]:
    """Brute force: mean of each tile, with plain loops."""
    z, y, x = field.shape
    return {
        (k, i, j): float(field[k, i * t : (i + 1) * t, j * t : (j + 1) * t].mean())
        for k in range(z)
        for i in range(math.ceil(y / t))
        for j in range(math.ceil(x / t))
    }


def _add_in_blocks(scores: RegionScores, field: np.ndarray, block=(2, 50, 70)) -> None:
    for z in range(0, field.shape[0], block[0]):
        for y in range(0, field.shape[1], block[1]):
            for x in range(0, field.shape[2], block[2]):
                region = (slice(z, z + block[0]), slice(y, y + block[1]), slice(x, x + block[2]))
                region = tuple(slice(s.start, min(s.stop, n)) for s, n in zip(region, field.shape))
                scores.add(region, field[region])


def test_regions_come_out_from_most_to_least_uncertain_each_once():
    rng = np.random.default_rng(0)
    field = rng.random((3, 300, 260)) * 0.5
    field[1, 130:180, 70:120] = 1.0  # inside tile (1, 2, 1): y 128..192, x 64..128
    scores = RegionScores(field.shape, tile=64)
    assert scores.grid_shape == (3, 5, 5) and scores.tile == 64
    _add_in_blocks(scores, field)
    means = _tile_means(field, 64)
    score = scores.score()
    assert all(score[k] == pytest.approx(v) for k, v in means.items())
    expected = sorted(means, key=lambda k: (-means[k], k))
    assert expected[0] == (1, 2, 1)
    assert scores.reviewed_fraction == 0
    seen = []
    while (region := scores.next_region()) is not None:
        z, y, x = region
        assert z.stop - z.start == 1
        seen.append((z.start, y.start // 64, x.start // 64))
        assert (y.stop, x.stop) == (min(y.start + 64, 300), min(x.start + 64, 260))
    assert seen == expected and len(set(seen)) == len(means)
    assert scores.next_region() is None and scores.reviewed_fraction == 1


def test_uint8_values_equal_floats_over_255():
    rng = np.random.default_rng(1)
    u8 = to_uint8(rng.random((2, 90, 100)))
    a, b = RegionScores(u8.shape, 32), RegionScores(u8.shape, 32)
    _add_in_blocks(a, u8, (1, 45, 33))
    _add_in_blocks(b, u8 / 255, (2, 31, 64))
    assert not np.isnan(a.score()).any() and np.allclose(a.score(), b.score())
    assert np.nanmax(a.score()) <= 1


def test_adding_the_same_region_again_replaces_it():
    scores = RegionScores((100, 100), tile=50)
    region = (slice(10, 60), slice(0, 100))
    scores.add(region, np.full((50, 100), 0.8))
    once = scores.score().copy()
    scores.add(region, np.full((50, 100), 0.8))
    assert np.allclose(scores.score(), once, equal_nan=True)
    scores.add(region, np.full((50, 100), 0.2))  # a new model predicts the block again
    assert np.allclose(scores.score(), [[0.2, 0.2], [0.2, 0.2]])
    assert np.allclose(scores.coverage(), [[0.8, 0.8], [0.2, 0.2]])


def test_min_coverage_excludes_barely_covered_tiles_in_2d():
    scores = RegionScores((100, 90), tile=50)
    assert scores.grid_shape == (2, 2)
    scores.add((slice(0, 50), slice(0, 10)), np.ones((50, 10)))  # 20 % of tile (0, 0)
    scores.add((slice(50, 100), slice(50, 90)), np.full((50, 40), 0.3))  # all of the smaller tile (1, 1)
    assert np.isnan(scores.score()[0, 1]) and scores.score()[0, 0] == 1
    assert scores.next_region() == (slice(50, 100), slice(50, 90))
    assert scores.next_region() is None
    assert scores.reviewed_fraction == 0.5
    assert scores.next_region(min_coverage=0.1) == (slice(0, 50), slice(0, 50))
    assert scores.next_region(min_coverage=0.0) is None  # untouched tiles are never offered


def test_ties_go_in_c_order_and_reset_keeps_reviewed_marks_unless_asked():
    scores = RegionScores((2, 40, 40), tile=20)
    field = np.full((2, 40, 40), 0.5, np.float32)
    scores.add((slice(0, 2), slice(0, 40), slice(0, 40)), field)
    assert scores.next_region() == (slice(0, 1), slice(0, 20), slice(0, 20))
    scores.mark_reviewed((slice(0, 1), slice(15, 25), slice(0, 5)))  # touches (0, 0, 0) and (0, 1, 0)
    assert scores.next_region() == (slice(0, 1), slice(0, 20), slice(20, 40))
    assert scores.reviewed_fraction == 3 / 8
    scores.reset()
    assert np.isnan(scores.score()).all() and scores.reviewed_fraction == 0 and scores.next_region() is None
    scores.add((slice(0, 2), slice(0, 40), slice(0, 40)), field)
    assert scores.next_region() == (slice(0, 1), slice(20, 40), slice(20, 40))
    scores.reset(reviewed=True)
    scores.add((slice(0, 2), slice(0, 40), slice(0, 40)), field)
    assert scores.next_region() == (slice(0, 1), slice(0, 20), slice(0, 20))


def test_bad_shapes_tiles_and_values_are_refused():
    for shape in ((10,), (2, 3, 4, 5), (0, 10)):
        with pytest.raises(ValueError, match="2D"):
            RegionScores(shape)
    with pytest.raises(ValueError, match="tile"):
        RegionScores((10, 10), tile=0)
    with pytest.raises(ValueError, match="do not match"):
        RegionScores((10, 10), 4).add((slice(0, 5), slice(0, 5)), np.zeros((5, 4)))


# -- an ensemble's disagreement -------------------------------------------------------------------------------------


def test_members_that_agree_do_not_disagree_whatever_their_confidence():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=(4, 5)).transpose(2, 0, 1).astype(np.float32)  # (K, 4, 5)
    d = disagreement(np.stack([p, p, p]))
    assert d.dtype == np.float32 and d.shape == (4, 5)
    assert np.abs(d).max() < 1e-6 and entropy(p).min() > 0.05  # uncertain, but all alike: nothing to disagree on
    assert (disagreement(p[None]) == 0).all()  # one member never disagrees


def test_confident_members_that_contradict_each_other_disagree_fully():
    a = np.array([[1.0, 0.9], [0.0, 0.1]], np.float32)  # (K=2, 2 pixels)
    b = np.array([[0.0, 0.1], [1.0, 0.9]], np.float32)
    d = disagreement(np.stack([a, b]))
    assert d[0] == pytest.approx(1.0)
    # mutual information: H(mean) - mean H(member), over log min(M, K)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert d[1] == pytest.approx((math.log(2) - h) / math.log(2), rel=1e-5)
    hesitant = np.full((2, 2), 0.5, np.float32)  # both members at 50/50: the mean is as uncertain, yet they agree
    assert np.abs(disagreement(np.stack([hesitant, hesitant]))).max() < 1e-6 and entropy(hesitant).min() == 1
    three = np.eye(3, dtype=np.float32)[:, :, None]  # three members, each certain of another of three classes
    assert disagreement(three)[0] == pytest.approx(1.0)
    two_of_three = np.stack([np.eye(3, dtype=np.float32)[0], np.eye(3, dtype=np.float32)[1]])[:, :, None]
    assert disagreement(two_of_three)[0] == pytest.approx(1.0)  # normalised by log min(M, K) = log 2


def test_disagreement_is_a_member_measure_not_a_class_measure():
    assert "disagreement" in MEMBER_MEASURES and "disagreement" not in UNCERTAINTY_MEASURES
    with pytest.raises(ValueError, match="member probabilities"):
        uncertainty(np.full((2, 3), 0.5), "disagreement")
    with pytest.raises(ValueError):
        disagreement(np.zeros(3, np.float32))


def test_the_uncertainty_sink_writes_an_ensembles_disagreement_block_by_block():
    from napari_msd.inference import Predictor
    from napari_msd.inference.sinks import UncertaintyInto, stream
    from napari_msd.models import Ensemble

    from helpers.networks import image, metadata, msd

    ensemble = Ensemble.of([msd(seed=0), msd(seed=1)]).eval()
    predictor = Predictor(ensemble, metadata(ensemble))
    img = image((70, 60))
    review = UncertaintyInto(np.zeros(img.shape, np.uint8), "disagreement")
    scores = RegionScores(img.shape, tile=16)
    for done in stream(predictor, img, [review], block_shape=(32, 25), probabilities=False, disagreement=True):
        assert done.probabilities is None and done.disagreement is not None
        scores.add(done.block.out, review.latest)
    whole = next(predictor.blocks(img, block_shape=img.shape, disagreement=True)).disagreement
    assert np.abs(review.out.astype(int) - to_uint8(whole)).max() <= 1 and review.out.max() > 0
    assert scores.next_region() is not None  # "Next uncertain region" reads the same scores
    single = Predictor(msd(), metadata(msd()))
    with pytest.raises(ValueError, match="needs an ensemble"):
        list(stream(single, img, [UncertaintyInto(np.zeros(img.shape, np.uint8), "disagreement")], disagreement=True))
