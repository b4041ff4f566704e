"""Test-time flips: every mirror once, each answer mirrored back, probabilities averaged."""

from __future__ import annotations

import torch

from napari_msd.inference.flips import flip_averaged, mirror_axes


def test_every_mirror_of_the_spatial_axes():
    assert mirror_axes(2) == [(), (2,), (3,), (2, 3)]
    assert len(mirror_axes(3)) == 8 and len(set(mirror_axes(3))) == 8


def test_a_mirror_symmetric_network_is_unchanged():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect")
    with torch.no_grad():  # a kernel symmetric under both flips: the network commutes with mirroring
        w = net.weight
        w.copy_((w + w.flip(2) + w.flip(3) + w.flip(2, 3)) / 4)
    x = torch.randn(2, 1, 9, 11)
    with torch.no_grad():
        assert torch.allclose(flip_averaged(net, x), torch.softmax(net(x), 1), atol=1e-6)


def test_an_asymmetric_network_gets_the_mean_of_its_mirrored_answers():
    torch.manual_seed(1)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        expected = sum(
            torch.softmax(net(x.flip(a) if a else x), 1).flip(a) if a else torch.softmax(net(x), 1)
            for a in [(), (2,), (3,), (2, 3)]
        )
        out = flip_averaged(net, x)
    assert torch.allclose(out, expected / 4, atol=1e-6)
    assert not torch.allclose(out, torch.softmax(net(x), 1), atol=1e-3)  # mirroring changed something
    assert torch.allclose(out.sum(1), torch.ones(1, 8, 8), atol=1e-5)
