"""The one prediction driver: every sink holds a block before the caller sees it, and each sink writes what the
whole-image prediction says."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msd.base.quantise import quantise
from napari_msd.inference import Predictor
from napari_msd.inference.sinks import (
    UncertaintyInto,
    class_probabilities_into,
    labels_into,
    probabilities_into,
    stream,
)
from napari_msd.inference.uncertainty import margin, to_uint8

from helpers.networks import image, metadata, msd

SHAPE, BLOCK = (70, 60), (32, 25)


@pytest.fixture(scope="module")
def predictor():
    net = msd()
    return Predictor(net, metadata(net), batch_size=2)


def test_every_sink_writes_the_whole_image_prediction(predictor):
    img = image(SHAPE)
    whole = predictor.predict(img)
    labels = np.zeros(SHAPE, np.uint8)
    probs = np.zeros((3, *SHAPE), np.float32)
    per_class = [np.zeros(SHAPE, np.uint8) for _ in range(3)]
    review = UncertaintyInto(np.zeros(SHAPE, np.uint8), "margin")
    sinks = [labels_into(labels), probabilities_into(probs), class_probabilities_into(per_class), review]
    halo = predictor.receptive_field
    done = list(stream(predictor, img, sinks, block_shape=BLOCK, halo=halo))
    assert len(done) == len(predictor.plan(SHAPE, BLOCK, halo)) > 2
    assert np.abs(probs - whole).max() < 1e-5
    top2 = np.sort(whole, axis=0)[-2:]
    sure = top2[1] - top2[0] > 1e-4
    assert (labels == whole.argmax(0) + 1)[sure].all()
    for k in range(3):
        assert np.abs(per_class[k].astype(int) - quantise(whole[k], np.uint8)).max() <= 1
    assert np.abs(review.out.astype(int) - to_uint8(margin(whole))).max() <= 1
    assert review.latest is not None and review.latest.shape == tuple(s.stop - s.start for s in done[-1].block.out)


def test_a_block_reaches_every_sink_before_the_caller(predictor):
    img = image(SHAPE)
    seen: list[list[tuple[int, ...]]] = [[], []]
    sinks = [lambda d: seen[0].append(d.block.index), lambda d: seen[1].append(d.block.index)]
    for done in stream(predictor, img, sinks, block_shape=BLOCK):
        assert seen[0][-1] == seen[1][-1] == done.block.index
    assert seen[0] == seen[1] and len(seen[0]) == len(predictor.plan(SHAPE, BLOCK))


def test_probability_sinks_refuse_blocks_computed_without_probabilities(predictor):
    with pytest.raises(ValueError, match="probabilities=True"):
        next(stream(predictor, image(SHAPE), [UncertaintyInto(np.zeros(SHAPE, np.uint8))], probabilities=False))
