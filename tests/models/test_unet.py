"""U-Net: shapes for any size, anisotropic 3D, config round trip, tiling independence, receptive field."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from napari_msd.models.registry import build_model
from napari_msd.models.unet import UNet


def _randomise_batchnorm(net: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode batch norm is not the identity."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("shape", [(17, 23), (5, 40), (1, 1), (32, 32)])
def test_output_shape_2d(shape, norm):
    net = UNet(2, 3, depth=3, base_channels=4, norm=norm)
    y = net(torch.randn(2, 2, *shape))
    assert y.shape == (2, 3, *shape)


@pytest.mark.parametrize("shape", [(5, 9, 13), (1, 7, 6), (8, 8, 8)])
def test_output_shape_3d(shape):
    net = UNet(1, 2, ndim=3, depth=2, base_channels=4)
    y = net(torch.randn(2, 1, *shape))
    assert y.shape == (2, 2, *shape)


def test_anisotropic_thin_stack_pools_only_in_plane_first():
    net = UNet(1, 2, ndim=3, depth=3, base_channels=4, anisotropic_levels=2)
    assert net.pool_factors == (2, 8, 8)
    level_shapes = {}
    for k, enc in enumerate(net.encoders):
        enc.register_forward_hook(lambda m, i, o, k=k: level_shapes.__setitem__(k, tuple(o.shape[2:])))
    y = net(torch.randn(2, 1, 3, 20, 21))
    assert y.shape == (2, 2, 3, 20, 21)
    # z: 3 padded to 4, pooled only at the last step; y/x: padded to 24, pooled at every step
    assert level_shapes == {0: (4, 24, 24), 1: (4, 12, 12), 2: (4, 6, 6), 3: (2, 3, 3)}
    for k in range(3):
        flat = k < 2
        for block in (net.encoders[k], net.decoders[k]):
            kernels = {m.kernel_size for m in block if isinstance(m, nn.Conv3d)}
            assert kernels == ({(1, 3, 3)} if flat else {(3, 3, 3)})
        assert net.upsamplers[k].stride == ((1, 2, 2) if flat else (2, 2, 2))
    assert {m.kernel_size for m in net.encoders[3] if isinstance(m, nn.Conv3d)} == {(3, 3, 3)}

    fully_flat = UNet(1, 1, ndim=3, depth=2, base_channels=4, anisotropic_levels=2)
    assert fully_flat.pool_factors == (1, 4, 4)
    assert fully_flat(torch.randn(2, 1, 1, 9, 10)).shape == (2, 1, 1, 9, 10)


def test_config_round_trip_rebuilds_identical_network():
    net = UNet(2, 3, ndim=3, depth=2, base_channels=4, norm="batch", anisotropic_levels=1)
    net(torch.randn(2, 2, 4, 12, 12))  # train-mode pass: running statistics move away from their defaults
    config = json.loads(json.dumps(net.config()))
    assert config == {
        "in_channels": 2,
        "out_channels": 3,
        "ndim": 3,
        "depth": 2,
        "base_channels": 4,
        "norm": "batch",
        "anisotropic_levels": 1,
    }
    for rebuilt in (UNet(**config), build_model(UNet.arch, config)):
        state = net.state_dict()
        assert rebuilt.state_dict().keys() == state.keys()
        assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in state.items())
        rebuilt.load_state_dict(state)
        net.eval()
        rebuilt.eval()
        x = torch.randn(2, 2, 3, 10, 11)
        with torch.no_grad():
            assert torch.equal(net(x), rebuilt(x))

    plain = UNet(1, 1, norm=None, depth=2, base_channels=4)
    assert plain.config()["norm"] == "none"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    assert UNet(**plain.config()).state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("depth", [2, 3])
def test_crop_with_context_matches_whole_image(depth):
    generator = torch.Generator().manual_seed(depth)
    net = UNet(1, 2, depth=depth, base_channels=4)
    _randomise_batchnorm(net, generator)
    net.eval()
    factor, radius = 2**depth, net.receptive_field
    margin = -(-radius // factor) * factor  # >= receptive field, keeps the pooling grid aligned
    inner = 16
    size = inner + 2 * margin + 2 * factor  # the crop never touches the image border
    image = torch.randn(1, 1, size + 8, size, generator=generator)
    with torch.no_grad():
        whole = net(image)
        y0 = x0 = margin + factor  # interior region origin; crop origin y0 - margin is a multiple of factor
        crop = image[..., y0 - margin : y0 + inner + margin, x0 - margin : x0 + inner + margin]
        tile = net(crop)
    got = tile[..., margin : margin + inner, margin : margin + inner]
    want = whole[..., y0 : y0 + inner, x0 : x0 + inner]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # a crop cut at the image corner needs context only on its inner sides: the borders coincide
    with torch.no_grad():
        corner = net(image[..., : inner + margin, : inner + margin])
    torch.testing.assert_close(corner[..., :inner, :inner], whole[..., :inner, :inner], rtol=0, atol=1e-5)


def test_invalid_arguments_raise_value_error():
    for norm in ("instance", "group", "layer"):
        with pytest.raises(ValueError, match="norm"):
            UNet(1, 1, norm=norm)
    with pytest.raises(ValueError, match="ndim=3"):
        UNet(1, 1, ndim=2, anisotropic_levels=1)
    with pytest.raises(ValueError, match="anisotropic_levels"):
        UNet(1, 1, ndim=3, depth=2, anisotropic_levels=3)
    with pytest.raises(ValueError, match="anisotropic_levels"):
        UNet(1, 1, ndim=3, anisotropic_levels=-1)
    with pytest.raises(ValueError, match="ndim"):
        UNet(1, 1, ndim=4)


def test_wrong_input_shape_raises_value_error():
    net2, net3 = UNet(2, 1, depth=2, base_channels=4), UNet(1, 1, ndim=3, depth=2, base_channels=4)
    for net, x in (
        (net2, torch.randn(1, 1, 8, 8)),
        (net2, torch.randn(2, 8, 8)),
        (net2, torch.randn(1, 2, 4, 8, 8)),
        (net3, torch.randn(1, 1, 8, 8)),
        (net3, torch.randn(1, 2, 4, 8, 8)),
    ):
        with pytest.raises(ValueError, match="expects input of shape"):
            net(x)


@pytest.mark.parametrize("depth", [1, 2])
def test_receptive_field_bounds_the_influence_of_one_pixel(depth):
    generator = torch.Generator().manual_seed(10 + depth)
    net = UNet(1, 2, depth=depth, base_channels=4).double()
    _randomise_batchnorm(net, generator)
    net.eval()
    radius, factor = net.receptive_field, 2**depth
    assert radius == 7 * 2**depth - 5
    size = 2 * radius + 4 * factor  # a multiple of the pooling factor: no padding
    reach = 0
    for offset in range(factor):  # every position on the pooling grid
        x = torch.randn(1, 1, size, size, dtype=torch.double, generator=generator)
        c = size // 2 + offset
        with torch.no_grad():
            before = net(x)
            x[0, 0, c, c] += 10.0
            changed = torch.nonzero((net(x) - before).abs().amax(dim=1)[0] > 0)
        assert len(changed) > 0
        reach = max(reach, int((changed - c).abs().max()))
    assert reach <= radius
    assert reach >= radius - factor  # and the bound is not loose


def test_gradient_reaches_every_parameter():
    for net, x in (
        (UNet(2, 3, depth=2, base_channels=4), torch.randn(2, 2, 13, 18)),
        (UNet(1, 2, ndim=3, depth=2, base_channels=4, norm="none", anisotropic_levels=1), torch.randn(2, 1, 3, 9, 10)),
    ):
        net.train()
        y = net(x)
        loss = nn.functional.cross_entropy(y, torch.randint(0, y.shape[1], (x.shape[0], *x.shape[2:])))
        loss.backward()
        for name, p in net.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
