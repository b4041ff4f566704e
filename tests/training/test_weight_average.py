"""The running average of a network's weights: ramped decay, buffers follow the raw network, never trained."""

from __future__ import annotations

import pytest
import torch

from napari_msd.training.weight_average import WeightAverage


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))


def test_the_average_starts_as_a_frozen_copy():
    net = _net()
    average = WeightAverage(net, 0.99)
    assert average.model is not net and not average.model.training
    assert all(not p.requires_grad for p in average.model.parameters())
    for a, b in zip(average.model.parameters(), net.parameters()):
        assert torch.equal(a, b)


def test_update_moves_the_average_by_the_ramped_decay():
    net = _net()
    average = WeightAverage(net, 0.99)
    before = [p.detach().clone() for p in average.model.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    decay = min(0.99, 2 / 11)  # the first update: (1 + 1) / (10 + 1)
    average.update()
    for old, new in zip(before, average.model.parameters()):
        torch.testing.assert_close(new, old + (1 - decay) * 1.0)
    assert average.current_decay() == pytest.approx(3 / 12)


def test_the_decay_ramps_up_to_its_ceiling():
    average = WeightAverage(_net(), 0.9)
    decays = []
    for _ in range(200):
        decays.append(average.current_decay())
        average.update()
    assert decays == sorted(decays) and decays[0] < 0.2 and decays[-1] == 0.9


def test_normalisation_statistics_follow_the_raw_network():
    net = _net()
    average = WeightAverage(net, 0.99)
    net.train()
    net(torch.randn(4, 1, 8, 8) * 5 + 3)  # moves the batch-norm running statistics
    average.update()
    assert torch.equal(average.model[1].running_mean, net[1].running_mean)
    assert torch.equal(average.model[1].num_batches_tracked, net[1].num_batches_tracked)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_net(), decay)


def test_without_ramp_the_full_decay_applies_from_the_first_update():
    average = WeightAverage(_net(), 0.95, ramp=False)
    assert average.current_decay() == 0.95
    average.update()
    assert average.current_decay() == 0.95
