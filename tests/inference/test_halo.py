"""The measured effective halo: tiles predicted with it agree with whole-image prediction, and it reads little."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_msd.inference import Predictor, measure_effective_halo
from napari_msd.inference.halo import DEFAULT_CANDIDATES, default_region
from napari_msd.io.model_file import ModelMetadata
from napari_msd.models import MSDNet
from napari_msd.training.inputs import InputSpec
from napari_msd.training.normalization import Normalization

NORM = Normalization(20.0, 230.0)



def msd(in_channels=1, depth=12, seed=0) -> MSDNet:
    """MS-D with dilations 1..10 (receptive field 58 at depth 12), random head and biases."""
    torch.manual_seed(seed)
    net = MSDNet(in_channels, 3, depth=depth)
    with torch.no_grad():
        for p in (net.bias, net.head_weight, net.head_bias):
            p.normal_(0.0, 0.5)
    return net.eval()


def metadata(net, spec=InputSpec()) -> ModelMetadata:
    return ModelMetadata(arch=net.arch, config=net.config(), class_names=["a", "b", "c"],
                         receptive_field=int(net.receptive_field), normalization=NORM.to_dict(), input=spec.to_dict())


def image(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    smooth = sum(np.sin(g / (3.0 + i) + rng.uniform(0, 6)) for i, g in enumerate(grids))
    return np.clip(128 + 40 * smooth + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)


class CountingArray:
    def __init__(self, data):
        self._data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[tuple] = []

    def __getitem__(self, key):
        out = np.array(self._data[key])
        self.reads.append((key, out.size))
        return out


def test_tiles_with_the_measured_halo_agree_with_whole_image_prediction():
    net = msd()
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
    net = msd(in_channels=3, depth=8)
    spec = InputSpec("2.5d", 3)
    predictor = Predictor(net, metadata(net, spec))
    vol = CountingArray(image((7, 340, 340), seed=1))
    region = default_region(predictor, vol.shape)
    assert region == (slice(3, 4), slice(42, 298), slice(42, 298))
    halo = measure_effective_halo(predictor, vol, agreement=0.99)
    assert 0 <= halo <= net.receptive_field
    rf = net.receptive_field
    assert len(vol.reads) == 1
    key, size = vol.reads[0]
    assert key == (slice(2, 5), slice(42 - rf, 298 + rf), slice(42 - rf, 298 + rf)) and size < vol._data.size / 2


def test_no_candidate_below_the_reference_returns_the_reference_halo():
    net = msd(depth=6)
    img = image((60, 50))
    assert measure_effective_halo((net, metadata(net)), img, candidates=[]) == net.receptive_field
    assert measure_effective_halo((net, metadata(net)), img, candidates=[4, 8], reference_halo=4) == 4
    with pytest.raises(ValueError, match="agreement"):
        measure_effective_halo((net, metadata(net)), img, agreement=0)
