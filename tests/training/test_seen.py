"""The prediction left as it was around corrections (training.seen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msd.base.inputs import InputSpec
from napari_msd.base.normalization import Normalization
from napari_msd.training.sampling import TrainingData, split
from napari_msd.training.seen import SeenRings


class Threshold(torch.nn.Module):
    """Class 1 where the input is above ``level`` (confidently, far from it), else class 0."""

    def __init__(self, level: float, sharpness: float = 20.0):
        super().__init__()
        self.level, self.sharpness = level, sharpness

    def forward(self, x):
        z = self.sharpness * (x[:, :1] - self.level)
        return torch.cat([-z, z], 1)


def _rings(model, image, new, old, **kw):
    spec = InputSpec()
    index = split(TrainingData(image, new, "new"), spec, val_fraction=0.0)
    return SeenRings(
        model, [index], [TrainingData(image, old, "old")], spec, Normalization(0.0, 1.0), torch.device("cpu"), **kw
    )


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    image = np.where(np.arange(128)[None, :] < 64, 0.2, 0.8).repeat(128, 0).astype(np.float32)
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    new = np.zeros(image.shape, np.uint8)
    new[60:64, 56:62] = 1  # a correction stroke near the boundary (x = 64): windows see both classes
    old = np.zeros(image.shape, np.uint8)
    old[10:12, 90:110] = 2
    return image, new, old


def test_a_network_that_predicts_as_the_parent_agrees_fully_one_that_moves_the_boundary_does_not(scene):
    image, new, old = scene
    rings = _rings(Threshold(0.5), image, new, old, windows=4, side=64)
    assert len(rings) > 0
    assert rings.agreement(Threshold(0.5)) == 1.0
    moved = rings.agreement(Threshold(0.9))  # everything is class 0 now: the parent's class 1 pixels all changed
    assert moved == pytest.approx(0.5, abs=0.01)  # class-balanced: class 0 kept, class 1 lost
    assert rings.agreement(Threshold(0.45)) == 1.0  # a small shift of the boundary in empty intensity space


def test_pixels_near_labels_and_where_the_parent_was_unsure_are_not_counted(scene):
    image, new, old = scene
    rings = _rings(Threshold(0.5, sharpness=0.01), image, new, old)  # never confident
    assert rings.agreement(Threshold(0.9)) == 1.0
    rings = _rings(Threshold(0.5), image, new, old, windows=2, side=64, margin=8)
    for (_, seen), mask in zip(rings.tiles, rings.masks):
        assert mask.sum() <= seen.sum()
    near = rings.tiles[0][1]
    assert near.shape == (64, 64) and not near.all()  # the stroke and its margin are left out


def test_new_labels_on_another_image_are_not_corrections(scene):
    image, new, old = scene
    spec = InputSpec()
    index = split(TrainingData(image, new, "new"), spec, val_fraction=0.0)
    other = image.copy()
    rings = SeenRings(
        Threshold(0.5), [index], [TrainingData(other, old, "old")], spec, Normalization(0.0, 1.0), torch.device("cpu")
    )
    assert len(rings) == 0 and rings.agreement(Threshold(0.9)) == 1.0
    with pytest.raises(ValueError, match="3D"):
        SeenRings(Threshold(0.5), [index], [], InputSpec(mode="3d"), Normalization(0.0, 1.0), torch.device("cpu"))
