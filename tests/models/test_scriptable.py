"""The TorchScript twins compute what the networks compute, for any input size, after a save and load."""

from __future__ import annotations

import pytest
import torch

from napari_msd.models import MSDNet, UNet
from napari_msd.models.scriptable import script_network

from helpers import networks

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def _unet3d() -> UNet:
    torch.manual_seed(1)
    return UNet(1, 2, ndim=3, depth=1, base_channels=2, anisotropic_levels=1).eval()


def _msd_3d_wide() -> MSDNet:
    torch.manual_seed(2)
    net = MSDNet(1, 2, depth=3, width=2, ndim=3, dilations=(1, 3))
    with torch.no_grad():
        for p in (net.bias, net.head_weight, net.head_bias):
            p.normal_(0.0, 0.5)
    return net.eval()


@pytest.mark.parametrize(
    "make",
    [
        networks.msd,
        lambda: networks.msd(in_channels=3, dilations=(1, 4, 9)),  # dilations beyond small inputs: repeated reflection
        _msd_3d_wide,
        networks.unet,
        _unet3d,
    ],
    ids=["msd", "msd-dilated", "msd-3d-width2", "unet", "unet-3d-anisotropic"],
)
def test_torchscript_matches_the_network_for_any_input_size(make, tmp_path):
    net = make()
    scripted = script_network(net)
    scripted.save(str(tmp_path / "w.pt"))
    loaded = torch.jit.load(str(tmp_path / "w.pt"))
    sizes = [(16, 16), (37, 23), (5, 3), (1, 9)] if net.ndim == 2 else [(4, 8, 8), (3, 11, 6), (1, 5, 2)]
    for i, size in enumerate(sizes):
        x = torch.rand(1 + i % 2, net.in_channels, *size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x), atol=1e-5, rtol=1e-5)


def test_other_architectures_are_refused():
    with pytest.raises(ValueError, match="no TorchScript export"):
        script_network(torch.nn.Conv2d(1, 2, 3))
