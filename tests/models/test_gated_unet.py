"""The gated-skip U-Net (F-CLmser-S): shapes, parameter count, the gates' behaviour, receptive field, files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from napari_msd.io.model_file import load_model, save_model
from napari_msd.models import GatedUNet, UNet
from napari_msd.models.gated_unet import GATES, ChannelGate, ConfidenceGate, PixelGate, paper_gates
from napari_msd.models.registry import PRESETS, build_model
from napari_msd.models.scriptable import script_network

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

LAYOUT = ["confidence", "channel+pixel", "channel"]  # every kind of gate in one tiny network


def _randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics, so eval-mode batch norm is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
    return net.eval()


def _tiny(ndim: int = 2, gates=LAYOUT, radius: int = 4, **kwargs) -> GatedUNet:
    torch.manual_seed(0)
    depth = kwargs.pop("depth", len(gates) if isinstance(gates, list) else 2)
    net = GatedUNet(1, 3, ndim=ndim, depth=depth, base_channels=4, skip_gates=gates, squeeze_radius=radius, **kwargs)
    return _randomise(net)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("shape", [(17, 23), (5, 40), (1, 1)])
def test_output_shape_2d(shape, gate):
    net = GatedUNet(2, 3, depth=2, base_channels=4, skip_gates=gate, squeeze_radius=5)
    assert net(torch.randn(2, 2, *shape)).shape == (2, 3, *shape)


@pytest.mark.parametrize("anisotropic_levels", [0, 1])
@pytest.mark.parametrize("shape", [(5, 9, 13), (1, 7, 6)])
def test_output_shape_3d(shape, anisotropic_levels):
    net = GatedUNet(1, 2, ndim=3, depth=2, base_channels=4, anisotropic_levels=anisotropic_levels, squeeze_radius=3)
    assert net.skip_gates == ["confidence", "confidence"]  # the paper's layout for two levels
    assert net(torch.randn(2, 1, *shape)).shape == (2, 2, *shape)
    mixed = GatedUNet(1, 2, ndim=3, depth=2, base_channels=4, anisotropic_levels=1, skip_gates="channel+pixel")
    assert mixed.gates[0].pixel.conv.kernel_size == (1, 3, 3) and mixed.gates[1].pixel.conv.kernel_size == (3, 3, 3)
    assert mixed.gates[0].channel.radii == [32, 32, 32] and mixed.gates[1].channel.radii == [32, 16, 16]
    assert mixed(torch.randn(1, 1, *shape)).shape == (1, 2, *shape)


def test_default_layout_is_the_papers():
    assert paper_gates(4) == ["confidence", "confidence", "channel+pixel", "channel+pixel"]
    net = GatedUNet(1, 2, **PRESETS["gated_unet"])
    assert net.skip_gates == paper_gates(4) and net.confidence_gamma == 3.0 and net.squeeze_radius == 32


def _gate_parameters(kind: str, channels: int, ndim: int) -> int:
    hidden = max(1, channels // 16)
    channel = channels * hidden + hidden + hidden * channels + channels  # squeeze and excitation 1x1 convolutions
    pixel = 3**ndim + 1  # one 3x3 convolution from the channel mean to one map
    confidence = channels + 1  # the temporary output: a 1x1 convolution to one map
    return {"none": 0, "channel": channel, "pixel": pixel, "channel+pixel": channel + pixel, "confidence": confidence}[
        kind
    ]


@pytest.mark.parametrize("ndim", [2, 3])
def test_parameter_count_is_the_unets_plus_the_gates(ndim):
    gates = ["confidence", "pixel", "channel+pixel", "channel"]
    net = GatedUNet(2, 3, ndim=ndim, depth=4, base_channels=4, skip_gates=gates)
    unet = UNet(2, 3, ndim=ndim, depth=4, base_channels=4)
    expected_gates = sum(_gate_parameters(g, 4 * 2**k, ndim) for k, g in enumerate(gates))
    assert net.gate_parameters == expected_gates
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in unet.parameters()) + expected_gates
    preset = GatedUNet(1, 2, **PRESETS["gated_unet"])
    preset_gates = sum(_gate_parameters(g, 32 * 2**k, 2) for k, g in enumerate(paper_gates(4)))
    assert preset.gate_parameters == preset_gates == 10_766
    assert sum(p.numel() for p in preset.parameters()) == 7_762_498 + 10_766  # the torch-em U-Net's plus the gates'


def test_channel_gates_are_per_channel_factors_in_0_1_on_an_image_within_the_window():
    torch.manual_seed(2)
    gate = ChannelGate(8, 2, radii=[6, 6])
    with torch.no_grad():
        nn.init.normal_(gate.excite.bias, 0.0, 3.0)  # some gates near 0, some near 1
        f = torch.randn(2, 8, 7, 5) * 3
        g = gate.gate(f)
    assert g.shape == f.shape and ((g >= 0) & (g <= 1)).all()
    torch.testing.assert_close(g, g[..., :1, :1].expand_as(g))  # one scalar per channel (and image)
    squeezed = f.mean(dim=(2, 3), keepdim=True)  # the paper's global average pooling
    expected = torch.sigmoid(gate.excite(torch.relu(gate.squeeze(squeezed))))
    torch.testing.assert_close(g[..., :1, :1], expected)
    torch.testing.assert_close(gate(f), f * g)
    # larger images: the squeeze is the mean over the window around each position
    big = torch.randn(1, 8, 30, 30)
    with torch.no_grad():
        local = gate.gate(big)[..., 15, 15]
        window = big[..., 9:22, 9:22].mean(dim=(2, 3), keepdim=True)
        torch.testing.assert_close(local, torch.sigmoid(gate.excite(torch.relu(gate.squeeze(window))))[..., 0, 0])


def test_pixel_gates_are_one_factor_in_0_1_per_pixel_from_the_channel_mean():
    torch.manual_seed(3)
    gate = PixelGate(2, flat=False)
    f = torch.randn(2, 6, 9, 11) * 4
    with torch.no_grad():
        g = gate.gate(f)
        expected = torch.sigmoid(gate.conv(f.mean(dim=1, keepdim=True)))
        assert g.shape == (2, 1, 9, 11) and ((g >= 0) & (g <= 1)).all() and g.std() > 0
        torch.testing.assert_close(g, expected)
        torch.testing.assert_close(gate(f), f * g)


def test_confidence_mask_is_one_minus_x_squared_to_the_gamma():
    torch.manual_seed(4)
    gate = ConfidenceGate(5, 2, gamma=3.0)
    up = torch.randn(2, 5, 8, 8) * 3
    with torch.no_grad():
        mask = gate.gate(up)
        x = torch.tanh(gate.temporary(up))  # the temporary output, in [-1, 1]
    assert mask.shape == (2, 1, 8, 8) and ((mask >= 0) & (mask <= 1)).all()
    torch.testing.assert_close(mask, (1 - x**2) ** 3)
    with torch.no_grad():  # unsure (x = 0): the skip passes whole; sure (x = +-1): nothing passes
        gate.temporary.weight.zero_()
        gate.temporary.bias.fill_(0.0)
        assert torch.equal(gate.gate(up), torch.ones(2, 1, 8, 8))
        gate.temporary.bias.fill_(-30.0)
        assert torch.equal(gate.gate(up), torch.zeros(2, 1, 8, 8))


def _force(net: GatedUNet, level: int, open_: bool) -> None:
    """Set the gate of ``level`` to 1 (``open_``) or 0 everywhere."""
    gate = net.gates[level]
    with torch.no_grad():
        for part, bias in ((gate.channel, "excite"), (gate.pixel, "conv")):
            if part is not None:
                conv = getattr(part, bias)
                conv.weight.zero_()
                conv.bias.fill_(200.0 if open_ else -200.0)  # sigmoid: exactly 1 or 0
        if gate.confidence is not None:
            gate.confidence.temporary.weight.zero_()
            gate.confidence.temporary.bias.fill_(0.0 if open_ else 30.0)  # tanh 0: mask 1; tanh 1: mask 0


@pytest.mark.parametrize("kind", ["channel", "pixel", "channel+pixel", "confidence"])
def test_a_closed_gate_removes_the_skips_contribution(kind):
    net = _tiny(gates=[kind, kind])
    _force(net, 0, open_=False)
    below = torch.randn(1, 8, 6, 5)
    skip_a, skip_b = torch.randn(1, 4, 12, 10), torch.randn(1, 4, 12, 10) * 5
    with torch.no_grad():
        up = net.upsamplers[0](below)
        assert torch.equal(net.gates[0](skip_a, up), torch.zeros_like(skip_a))
        torch.testing.assert_close(net._decode_level(0, skip_a, below), net._decode_level(0, skip_b, below))
        _force(net, 0, open_=True)
        assert not torch.allclose(net._decode_level(0, skip_a, below), net._decode_level(0, skip_b, below))


@pytest.mark.parametrize("kind", ["channel", "pixel", "channel+pixel", "confidence"])
def test_open_gates_give_the_plain_unet(kind):
    net = _tiny(gates=[kind, kind, kind])
    for level in range(3):
        _force(net, level, open_=True)
    unet = UNet(1, 3, depth=3, base_channels=4).eval()
    missing, unexpected = unet.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(k.startswith("gates.") for k in unexpected)
    x = torch.randn(2, 1, 19, 26)
    with torch.no_grad():
        torch.testing.assert_close(net(x), unet(x))
        _force(net, 0, open_=False)
        assert not torch.allclose(net(x), unet(x), atol=1e-3)


def test_receptive_field_formula():
    for depth in (1, 2, 4):
        plain = GatedUNet(1, 2, depth=depth, base_channels=4, skip_gates="none")
        confidence = GatedUNet(1, 2, depth=depth, base_channels=4, skip_gates="confidence")
        assert plain.receptive_field == confidence.receptive_field == 7 * 2**depth - 5
    # a wide squeeze window at level 0 reaches farther than the network: r(0) = 2 + max(2 + 20, 1 + r(1))
    net = GatedUNet(1, 2, depth=1, base_channels=4, skip_gates="channel", squeeze_radius=20)
    assert net.receptive_field == 2 + max(2 + 20, 1 + 6) == 24
    net = GatedUNet(1, 2, depth=1, base_channels=4, skip_gates="channel+pixel", squeeze_radius=20)
    assert net.receptive_field == 2 + 2 + 21
    assert GatedUNet(1, 2, **PRESETS["gated_unet"]).receptive_field == 107


@pytest.mark.parametrize("gates, radius", [(["channel+pixel"], 9), (["confidence", "channel+pixel"], 3)])
def test_receptive_field_bounds_the_influence_of_one_pixel(gates, radius):
    depth = len(gates)
    net = _tiny(gates=gates, radius=radius).double()
    rf, factor = net.receptive_field, 2**depth
    size = 2 * rf + 4 * factor  # a multiple of the pooling factor: no padding
    generator = torch.Generator().manual_seed(depth)
    reach = 0
    for offset in range(factor):
        x = torch.randn(1, 1, size, size, dtype=torch.double, generator=generator)
        c = size // 2 + offset
        with torch.no_grad():
            before = net(x)
            x[0, 0, c, c] += 10.0
            changed = torch.nonzero((net(x) - before).abs().amax(dim=1)[0] > 0)
        reach = max(reach, int((changed - c).abs().max()))
    assert rf - factor <= reach <= rf


def test_config_round_trip_and_bad_arguments():
    net = GatedUNet(2, 3, ndim=3, depth=2, base_channels=4, skip_gates=("pixel", "channel"), squeeze_radius=5)
    config = json.loads(json.dumps(net.config()))
    assert config["skip_gates"] == ["pixel", "channel"] and config["squeeze_radius"] == 5
    assert config["confidence_gamma"] == 3.0 and config["depth"] == 2
    rebuilt = build_model("gated_unet", config)
    assert isinstance(rebuilt, GatedUNet) and rebuilt.config() == config
    assert rebuilt.state_dict().keys() == net.state_dict().keys()
    for bad in ({"skip_gates": "attention"}, {"skip_gates": ["none"]}, {"squeeze_radius": -1}):
        with pytest.raises(ValueError):
            GatedUNet(1, 2, depth=2, **bad)


def test_model_file_round_trip_gives_identical_outputs(tmp_path):
    net = _tiny()
    save_model(tmp_path / "m.msd", net, class_names=["a", "b", "c"])
    loaded, meta = load_model(tmp_path / "m.msd")
    assert isinstance(loaded, GatedUNet) and meta.arch == "gated_unet" and meta.config["skip_gates"] == LAYOUT
    x = torch.randn(2, 1, 23, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make", [lambda: _tiny(), lambda: _tiny(ndim=3, gates="channel+pixel", anisotropic_levels=1)], ids=["2d", "3d"]
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
