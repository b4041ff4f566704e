"""The measured effective halo: tiles predicted with it agree with whole-image prediction, and it reads little."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_msd.base.inputs import InputSpec
from napari_msd.inference import Predictor, measure_effective_halo
from napari_msd.inference.halo import DEFAULT_CANDIDATES, default_region

from helpers.arrays import CountingArray
from helpers.networks import image, metadata, msd


def test_tiles_with_the_measured_halo_agree_with_whole_image_prediction():
    net = msd(depth=12, dilations=range(1, 11))  # receptive field 58
    meta = metadata(net)
    img = image((100, 90))
    block_shape = (25, 30)
    halo = measure_effective_halo((net, meta), img, region=(slice(None), slice(None)), block_shape=block_shape)
    assert 0 < halo < net.receptive_field  # context matters, but far less than the theoretical field

    predictor = Predictor(net, dataclasses.replace(meta, effective_halo=halo))
    assert predictor.default_halo(2) == (halo, halo)
    whole = predictor.predict(img).argmax(0) + 1
    labels = np.zeros(img.shape, np.uint8)
    list(predictor.run(img, labels, block_shape=block_shape))
    assert np.mean(labels == whole) >= 0.999
    # the candidate below does not reach the agreement: the measurement returned the smallest one
    smaller = np.zeros(img.shape, np.uint8)
    below = max(c for c in DEFAULT_CANDIDATES if c < halo)
    list(predictor.run(img, smaller, block_shape=block_shape, halo=below))
    assert np.mean(smaller == whole) < 0.999


def test_a_2_5d_model_is_measured_on_the_middle_slice_and_reads_only_region_and_halo():
    net = msd(in_channels=3, depth=8, dilations=range(1, 11))
    spec = InputSpec("2.5d", 3)
    predictor = Predictor(net, metadata(net, spec))
    vol = CountingArray(image((7, 340, 340), seed=1))
    region = default_region(predictor, vol.shape)
    assert region == (slice(3, 4), slice(42, 298), slice(42, 298))
    halo = measure_effective_halo(predictor, vol, agreement=0.99)
    assert 0 <= halo <= net.receptive_field
    rf = net.receptive_field
    assert len(vol.reads) == 1
    key, size = vol.keys[0], vol.reads[0]
    assert key == (slice(2, 5), slice(42 - rf, 298 + rf), slice(42 - rf, 298 + rf)) and size < vol._data.size / 2


def test_no_candidate_below_the_reference_returns_the_reference_halo():
    net = msd(depth=6, dilations=range(1, 11))
    img = image((60, 50))
    assert measure_effective_halo((net, metadata(net)), img, candidates=[]) == net.receptive_field
    assert measure_effective_halo((net, metadata(net)), img, candidates=[4, 8], reference_halo=4) == 4
    with pytest.raises(ValueError, match="agreement"):
        measure_effective_halo((net, metadata(net)), img, agreement=0)


def test_a_passed_deadline_stops_the_measurement_before_a_block_is_predicted(monkeypatch):
    import time

    net = msd(depth=6, dilations=range(1, 5))
    predictor = Predictor(net, metadata(net))
    blocks = []
    real = predictor.predict_block
    monkeypatch.setattr(predictor, "predict_block", lambda *a: blocks.append(1) or real(*a))
    img = image((64, 64))
    assert measure_effective_halo(predictor, img, deadline=time.perf_counter() - 1) is None
    assert not blocks
    assert measure_effective_halo(predictor, img, deadline=time.perf_counter() + 600) is not None and blocks
