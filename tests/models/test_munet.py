"""MUNet: shapes for any size, parameter count, per-scale outputs, the area-weighted fusion, receptive field, files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from napari_msd.io.model_file import load_model, save_model
from napari_msd.models import MUNet, UNet
from napari_msd.models.munet import fuse_scales, fusion_weights
from napari_msd.models.registry import PRESETS, build_model
from napari_msd.models.scriptable import script_network

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def _randomise(net: MUNet, seed: int = 0) -> MUNet:
    """Non-trivial batch-norm statistics and output biases, so eval mode is not near the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
        for p in [net.head_bias, *(head.bias for head in [net.head, *net.coarse_heads])]:
            p.copy_(torch.randn(p.shape, generator=generator))
    return net.eval()


def _tiny(ndim: int = 2, out: int = 3, radius: int = 4, **kwargs) -> MUNet:
    torch.manual_seed(0)
    return _randomise(MUNet(1, out, ndim=ndim, depth=2, base_channels=4, fusion_radius=radius, **kwargs))


@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("shape", [(17, 23), (5, 40), (1, 1), (33, 9)])
def test_output_shape_2d(shape, norm):
    net = MUNet(2, 3, depth=3, base_channels=4, norm=norm, fusion_radius=5)
    y = net(torch.randn(2, 2, *shape))
    assert y.shape == (2, 3, *shape)


@pytest.mark.parametrize("anisotropic_levels", [0, 1])
@pytest.mark.parametrize("shape", [(5, 9, 13), (1, 7, 6), (3, 11, 10)])
def test_output_shape_3d(shape, anisotropic_levels):
    net = MUNet(1, 2, ndim=3, depth=2, base_channels=4, anisotropic_levels=anisotropic_levels, fusion_radius=3)
    y = net(torch.randn(2, 1, *shape))
    assert y.shape == (2, 2, *shape)


def _unet_family_parameters(in_ch, out, depth, base, ndim, decoder_convs, norm="batch") -> int:
    """Parameters of the U-Net's encoder, up-sampling and decoder with ``decoder_convs`` convolutions per decoder
    level (3x3 kernels, no anisotropic levels): each convolution has weights and, with batch norm, a scale and a
    shift per output channel (else a bias)."""
    taps, up_taps = 3**ndim, 2**ndim
    per_conv_out = 2 if norm == "batch" else 1
    c = [base * 2**k for k in range(depth + 1)]
    total = 0
    for k in range(depth + 1):  # encoder blocks and the bottleneck: two convolutions each
        c_in = in_ch if k == 0 else c[k - 1]
        total += taps * (c_in * c[k] + c[k] * c[k]) + 2 * per_conv_out * c[k]
    for k in range(depth):
        total += up_taps * c[k + 1] * c[k] + c[k]  # transposed convolution, kernel = stride = 2
        total += taps * (2 * c[k] * c[k] + (decoder_convs - 1) * c[k] * c[k]) + decoder_convs * per_conv_out * c[k]
    return total


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("norm", ["batch", None])
def test_parameter_count_follows_the_architecture(ndim, norm):
    in_ch, out, depth, base = 2, 3, 3, 4
    net = MUNet(in_ch, out, ndim=ndim, depth=depth, base_channels=base, norm=norm)
    heads = sum(base * 2**k * out + out for k in range(depth))  # a 1x1 mask head per decoder level
    expected = _unet_family_parameters(in_ch, out, depth, base, ndim, 3, norm) + heads + out  # + the fused bias
    assert sum(p.numel() for p in net.parameters()) == expected
    # the U-Net's count by the same formula (two decoder convolutions, one head): the formula is the architecture's
    unet = UNet(in_ch, out, ndim=ndim, depth=depth, base_channels=base, norm=norm)
    assert sum(p.numel() for p in unet.parameters()) == _unet_family_parameters(
        in_ch, out, depth, base, ndim, 2, norm
    ) + (base * out + out)
    # the preset: the torch-em U-Net's size with the paper's four decoder steps
    preset = MUNet(1, 2, **PRESETS["munet"])
    assert (
        sum(p.numel() for p in preset.parameters())
        == _unet_family_parameters(1, 2, 4, 32, 2, 3) + sum(32 * 2**k * 2 + 2 for k in range(4)) + 2
    )
    assert sum(p.numel() for p in preset.parameters()) == 8_547_722


def test_decoder_steps_are_three_dbl_blocks():
    net = MUNet(1, 2, depth=2, base_channels=4)
    for block in net.decoders:
        convs = [m for m in block if isinstance(m, nn.Conv2d)]
        assert len(convs) == 3 and all(c.kernel_size == (3, 3) for c in convs)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in block) == 3
        slopes = {m.negative_slope for m in block if isinstance(m, nn.LeakyReLU)}
        assert slopes == {0.1} and sum(isinstance(m, nn.LeakyReLU) for m in block) == 3
    for block in net.encoders:  # the backbone is the U-Net's
        assert sum(isinstance(m, nn.ReLU) for m in block) == 2


@pytest.mark.parametrize("ndim, shape", [(2, (19, 26)), (3, (5, 9, 7))])
def test_one_output_per_decoder_scale_at_full_resolution_then_the_fused_one(ndim, shape):
    net = _tiny(ndim)
    x = torch.randn(2, 1, *shape)
    levels = {}
    for k, head in enumerate([net.head, *net.coarse_heads]):
        head.register_forward_hook(lambda m, i, o, k=k: levels.__setitem__(k, o))
    with torch.no_grad():
        outs = net.forward_scales(x)
        fused = net(x)
    assert len(outs) == net.depth + 1
    assert all(o.shape == (2, 3, *shape) for o in outs)
    torch.testing.assert_close(outs[-1], fused, rtol=0, atol=0)
    padded = tuple(-(-n // 4) * 4 for n in shape)  # the heads see the input padded to the pooling multiple
    assert levels[0].shape[2:] == padded and levels[1].shape[2:] == tuple(n // 2 for n in padded)
    mode = "bilinear" if ndim == 2 else "trilinear"
    coarse = torch.nn.functional.interpolate(levels[1], size=padded, mode=mode, align_corners=False)
    crop = (slice(None), slice(None), *(slice(0, n) for n in shape))
    torch.testing.assert_close(outs[1], coarse[crop])  # scale 1: its head's logits resized to the input
    torch.testing.assert_close(outs[0], levels[0][crop])


def test_fusion_weights_are_one_minus_each_masks_area_over_the_image():
    # an image no larger than the window: the paper's eq. (2) over the whole image, alpha_k = 1 - A_k / (W H)
    torch.manual_seed(1)
    probabilities = torch.rand(3, 2, 4, 6, 5).softmax(dim=2)  # (scales, batch, classes, Y, X)
    weights = fusion_weights(probabilities, radius=5)
    alpha = 1 - probabilities.sum(dim=(3, 4), keepdim=True) / (6 * 5) + 1e-6
    expected = (alpha / alpha.sum(0, keepdim=True)).expand_as(weights)
    torch.testing.assert_close(weights, expected)
    # a larger image: the area is taken over the window of half-width r around each pixel, clipped to the image
    probabilities = torch.rand(2, 1, 3, 20, 17).softmax(dim=2)
    weights = fusion_weights(probabilities, radius=3)
    for y, x in ((10, 8), (0, 0), (19, 2)):
        window = probabilities[..., max(0, y - 3) : y + 4, max(0, x - 3) : x + 4]
        alpha = 1 - window.mean(dim=(3, 4)) + 1e-6
        torch.testing.assert_close(weights[..., y, x], alpha / alpha.sum(0, keepdim=True))


def test_fused_output_is_the_area_weighted_vote_of_the_scales():
    net = _tiny(radius=40)  # the window covers the whole image: the paper's global areas
    x = torch.randn(1, 1, 21, 18)
    with torch.no_grad():
        *scales, fused = net.forward_scales(x)
    p = torch.stack([s.softmax(dim=1) for s in scales])
    alpha = 1 - p.mean(dim=(3, 4), keepdim=True) + 1e-6
    vote = ((alpha / alpha.sum(0)) * p).sum(0)
    expected = (vote / vote.sum(dim=1, keepdim=True)).log() + net.head_bias.view(1, -1, 1, 1)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)
    # where every scale says the same, the fused output says it too, whatever the weights
    same = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(fuse_scales([same, same, same], 2), same.log_softmax(dim=1), rtol=1e-5, atol=1e-5)
    # one output channel (a regression, as in self-supervised pretraining): the mean of the scales
    a, b = torch.randn(1, 1, 5, 5), torch.randn(1, 1, 5, 5)
    torch.testing.assert_close(fuse_scales([a, b], 2), (a + b) / 2)


def test_fusion_weights_carry_no_gradient_but_every_scale_does():
    net = MUNet(1, 2, depth=2, base_channels=4, fusion_radius=3)
    x = torch.randn(2, 1, 16, 16)
    net(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_receptive_field_formula():
    for depth, radius in ((1, 0), (2, 3), (4, 32)):
        net = MUNet(1, 2, depth=depth, base_channels=4, fusion_radius=radius)
        assert net.receptive_field == 8 * 2**depth - 6 + radius
        assert net.receptive_field == UNet(1, 2, depth=depth, base_channels=4).receptive_field + 2**depth - 1 + radius
    assert MUNet(1, 2, **PRESETS["munet"]).receptive_field == 154


@pytest.mark.parametrize("depth, radius", [(1, 2), (2, 3)])
def test_receptive_field_bounds_the_influence_of_one_pixel(depth, radius):
    torch.manual_seed(depth)
    net = _randomise(MUNet(1, 2, depth=depth, base_channels=4, fusion_radius=radius).double(), seed=depth)
    rf, factor = net.receptive_field, 2**depth
    size = 2 * rf + 4 * factor  # a multiple of the pooling factor: no padding
    generator = torch.Generator().manual_seed(depth)
    reach = 0
    for offset in range(factor):  # every position on the pooling grid
        x = torch.randn(1, 1, size, size, dtype=torch.double, generator=generator)
        c = size // 2 + offset
        with torch.no_grad():
            before = net(x)
            x[0, 0, c, c] += 10.0
            changed = torch.nonzero((net(x) - before).abs().amax(dim=1)[0] > 0)
        reach = max(reach, int((changed - c).abs().max()))
    assert rf - factor <= reach <= rf


def test_config_round_trip_and_registry():
    net = MUNet(2, 3, ndim=3, depth=2, base_channels=4, anisotropic_levels=1, fusion_radius=7)
    config = json.loads(json.dumps(net.config()))
    assert config == {
        "in_channels": 2,
        "out_channels": 3,
        "ndim": 3,
        "depth": 2,
        "base_channels": 4,
        "norm": "batch",
        "anisotropic_levels": 1,
        "fusion_radius": 7,
    }
    rebuilt = build_model("munet", config)
    assert isinstance(rebuilt, MUNet) and rebuilt.config() == config
    assert rebuilt.state_dict().keys() == net.state_dict().keys()
    with pytest.raises(ValueError, match="fusion_radius"):
        MUNet(1, 2, fusion_radius=-1)


def test_model_file_round_trip_gives_identical_outputs(tmp_path):
    net = _tiny(out=2)
    save_model(tmp_path / "m.msd", net, class_names=["membrane", "cell"])
    loaded, meta = load_model(tmp_path / "m.msd")
    assert isinstance(loaded, MUNet) and meta.arch == "munet" and meta.receptive_field == net.receptive_field
    x = torch.randn(2, 1, 23, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make", [lambda: _tiny(), lambda: _tiny(ndim=3, out=2, anisotropic_levels=1)], ids=["2d", "3d"]
)
def test_torchscript_twin_matches_for_any_input_size(make, tmp_path):
    net = make()
    script_network(net).save(str(tmp_path / "w.pt"))
    loaded = torch.jit.load(str(tmp_path / "w.pt"))
    sizes = [(16, 16), (37, 23), (5, 3), (1, 9)] if net.ndim == 2 else [(4, 8, 8), (3, 11, 6), (1, 5, 2)]
    for size in sizes:
        x = torch.rand(2, 1, *size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x), atol=1e-5, rtol=1e-5)


def test_the_class_prior_correction_shifts_the_fused_output_exactly():
    from napari_msd.training.prior import output_bias, shift_output_bias

    net = _tiny()
    assert output_bias(net) is net.head_bias
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        before = net(x).softmax(dim=1)
    prior, train_prior = torch.tensor([0.6, 0.3, 0.1]), torch.full((3,), 1 / 3)
    shift_output_bias(net, prior.numpy(), train_prior.numpy())
    with torch.no_grad():
        after = net(x).softmax(dim=1)
    corrected = before * (prior / train_prior).view(1, 3, 1, 1)  # Saerens et al.: posterior times the prior ratio
    torch.testing.assert_close(after, corrected / corrected.sum(dim=1, keepdim=True))
