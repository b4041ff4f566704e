"""MSDNet against the paper's specification and the plain-autograd reference."""

from __future__ import annotations

import math

import pytest
import torch

from napari_msd.models.msd import MSDNet, msd_dilation_schedule, msd_parameter_count
from napari_msd.models.msd_reference import reference_forward


@pytest.fixture(
    params=[
        ("padded taps", "sample-major"),
        ("framed", "sample-major"),
        ("padded taps", "maps-first"),
        ("framed", "maps-first"),
    ],
    ids=lambda p: ", ".join(p),
)
def layout(request, monkeypatch):
    """Run a test with each buffer layout of the MS-D kernel (``msd_kernel.layout_for`` picks by input size) and each
    arrangement of the batch (``msd_kernel.storage_for`` picks by the products' dtype: maps-first for bfloat16)."""
    from napari_msd.models import msd_kernel

    layout, storage = request.param
    monkeypatch.setattr(msd_kernel, "FRAMED_MAX_GROWTH", 0.0 if layout == "padded taps" else math.inf)
    if storage == "maps-first":
        monkeypatch.setattr(msd_kernel, "storage_for", lambda n, stored, products: msd_kernel.MapsFirst(n, stored))
    return request.param


def _randomised(net: MSDNet) -> MSDNet:
    """Non-zero head and biases, so every parameter influences the output."""
    with torch.no_grad():
        for p in (net.bias, net.head_weight, net.head_bias):
            p.normal_(0.0, 0.5)
    return net


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, inputs, seed)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize(
    ("depth", "width", "c_in", "c_out", "ndim"),
    [(100, 1, 1, 2, 2), (10, 2, 3, 4, 2), (25, 3, 5, 1, 2), (100, 1, 1, 2, 3), (7, 2, 2, 3, 3), (1, 1, 1, 1, 2)],
)
def test_parameter_count_is_the_papers_formula(depth, width, c_in, c_out, ndim):
    net = MSDNet(c_in, c_out, depth=depth, width=width, ndim=ndim)
    taps = 9 if ndim == 2 else 27
    formula = taps * sum(width * (i * width + c_in) for i in range(depth)) + (width * depth + c_in) * c_out
    formula += width * depth + c_out
    assert sum(p.numel() for p in net.parameters()) == formula == msd_parameter_count(c_in, c_out, depth, width, ndim)


def test_paper_network_has_45754_parameters_and_radius_550():
    net = MSDNet(1, 2, depth=100, width=1)
    assert sum(p.numel() for p in net.parameters()) == 45_754
    assert net.receptive_field == 550


def test_dilation_of_channel_j_in_layer_i_cycles_through_the_list():
    schedule = msd_dilation_schedule(depth=7, width=3, dilations=range(1, 11))
    for i in range(7):
        for j in range(3):
            assert schedule[i][j] == ((i * 3 + j) % 10) + 1
    assert msd_dilation_schedule(3, 2, [1, 2, 4]) == [[1, 2], [4, 1], [2, 4]]
    assert MSDNet(1, 1, depth=6, width=2, dilations=[1, 2, 4]).receptive_field == 2 + 4 + 4 + 2 + 4 + 4


@pytest.mark.parametrize("ndim", [2, 3])
def test_initialisation_follows_the_paper(ndim):
    depth, width, c_in, c_out = 60, 2, 3, 4
    net = MSDNet(c_in, c_out, depth=depth, width=width, ndim=ndim)
    n_c = 3**ndim * (c_in + width * (depth - 1)) + c_out
    weights = torch.cat([w.detach().flatten() for w in net.weights])
    assert weights.mean().abs() < 0.05 * math.sqrt(2 / n_c)
    assert weights.std().item() == pytest.approx(math.sqrt(2 / n_c), rel=0.03)
    assert not net.bias.any() and not net.head_weight.any() and not net.head_bias.any()
    assert not any("norm" in type(m).__name__.lower() for m in net.modules())


@pytest.mark.parametrize(
    ("ndim", "shape", "depth", "width", "c_in", "c_out", "block"),
    [
        (2, (2, 1, 23, 17), 12, 1, 1, 2, 4),
        (2, (3, 2, 15, 12), 7, 2, 2, 3, 3),
        (2, (2, 1, 40, 9), 20, 1, 1, 2, 1),
        (3, (2, 1, 9, 8, 7), 12, 1, 1, 2, 4),
        (3, (2, 2, 6, 7, 5), 5, 2, 2, 3, 2),
    ],
)
def test_outputs_and_gradients_match_reference_in_float64(ndim, shape, depth, width, c_in, c_out, block, layout):
    torch.manual_seed(0)
    net = _randomised(MSDNet(c_in, c_out, depth=depth, width=width, ndim=ndim, block=block).double())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = [x, *net.parameters()]
    fast = net(x)
    slow = reference_forward(net, x)
    assert fast.shape == (shape[0], c_out, *shape[2:])
    assert _rel_err(fast, slow) < 1e-6
    seed = torch.randn_like(fast)
    for g_fast, g_slow in zip(_grads(fast, params, seed), _grads(slow, params, seed)):
        assert _rel_err(g_fast, g_slow) < 1e-6


def test_block_size_changes_speed_not_result(layout):
    torch.manual_seed(1)
    x = torch.randn(2, 1, 20, 20, dtype=torch.float64)
    outs = []
    for block in (1, 3, 8, 50):
        torch.manual_seed(2)
        net = _randomised(MSDNet(1, 2, depth=9, block=block).double())
        outs.append(net(x))
    for out in outs[1:]:
        assert torch.allclose(out, outs[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradcheck_on_a_small_network(ndim, layout):
    # finite differences are wrong where a pre-activation lies within eps of the ReLU kink; this seed has none
    torch.manual_seed(4)
    net = _randomised(MSDNet(2, 2, depth=4, width=2, ndim=ndim, dilations=[1, 2, 3], block=3).double())
    shape = (2, 2, 6, 5) if ndim == 2 else (2, 2, 3, 4, 3)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = list(net.parameters())
    # check the input gradient with gradcheck, parameter gradients through a functional call
    assert torch.autograd.gradcheck(lambda inp: net(inp), (x,), eps=1e-6, atol=1e-7)
    names = [n for n, _ in net.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_(True) for p in params)

    def functional(*ps):
        return torch.func.functional_call(net, dict(zip(names, ps)), (x.detach(),))

    assert torch.autograd.gradcheck(functional, values, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("ndim", "spatial"),
    [(2, (1, 1)), (2, (2, 3)), (2, (1, 17)), (2, (5, 4)), (3, (1, 6, 6)), (3, (3, 2, 1)), (3, (2, 9, 9))],
)
def test_inputs_smaller_than_the_largest_dilation_work_and_match_reference(ndim, spatial, layout):
    torch.manual_seed(4)
    net = _randomised(MSDNet(1, 3, depth=10, ndim=ndim).double())  # dilations up to 10
    x = torch.randn((2, 1, *spatial), dtype=torch.float64, requires_grad=True)
    fast, slow = net(x), reference_forward(net, x)
    assert fast.shape == (2, 3, *spatial)
    assert _rel_err(fast, slow) < 1e-6
    seed = torch.randn_like(fast)
    params = [x, *net.parameters()]
    for g_fast, g_slow in zip(_grads(fast, params, seed), _grads(slow, params, seed)):
        assert _rel_err(g_fast, g_slow) < 1e-6


@pytest.mark.parametrize(("ndim", "spatial"), [(2, (11, 9)), (3, (7, 8, 6))])
def test_small_dilations_on_inputs_longer_than_them_match_reference(ndim, spatial, layout):
    torch.manual_seed(6)  # every axis longer than the frame: the framed layout's one-mirror path in every layer
    net = _randomised(MSDNet(2, 2, depth=6, width=2, ndim=ndim, dilations=[1, 2, 3], block=4).double())
    x = torch.randn((2, 2, *spatial), dtype=torch.float64, requires_grad=True)
    fast, slow = net(x), reference_forward(net, x)
    assert _rel_err(fast, slow) < 1e-6
    seed = torch.randn_like(fast)
    params = [x, *net.parameters()]
    for g_fast, g_slow in zip(_grads(fast, params, seed), _grads(slow, params, seed)):
        assert _rel_err(g_fast, g_slow) < 1e-6


def test_float32_agrees_with_float64(layout):
    torch.manual_seed(5)
    net = _randomised(MSDNet(1, 2, depth=30))
    x = torch.randn(1, 1, 33, 31)
    out32 = net(x)
    out64 = net.double()(x.double())
    assert torch.allclose(out32.double(), out64, rtol=1e-4, atol=1e-4)


def test_saved_activations_grow_linearly_with_depth():
    """Backward keeps one buffer of in + width * depth maps, not the O(depth^2) of concatenation."""
    pixels = 32 * 32

    def saved_maps(depth: int) -> float:
        net = MSDNet(1, 2, depth=depth)
        n_params = sum(p.numel() for p in net.parameters())
        saved = []

        def pack(t):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.randn(1, 1, 32, 32, requires_grad=True))
        return (sum(saved) - n_params) / pixels

    assert saved_maps(100) <= 1 + 100 + 1  # the buffer, plus at most one map of slack
    assert saved_maps(50) <= 1 + 50 + 1
    naive = []
    net = MSDNet(1, 2, depth=20)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: naive.append(t.numel()) or t, lambda t: t):
        reference_forward(net, torch.randn(1, 1, 32, 32))
    assert sum(naive) / pixels > 20 * 20 / 2  # the reference really is quadratic: the comparison means something


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ndim": 4}, "ndim must be 2 or 3"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"width": 0}, "width must be a positive integer"),
        ({"dilations": []}, "dilations must be positive"),
        ({"dilations": [0, 1]}, "dilations must be positive"),
    ],
)
def test_invalid_configuration_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MSDNet(1, 2, **kwargs)


@pytest.mark.parametrize("shape", [(1, 2, 16, 16), (1, 1, 16), (1, 1, 4, 16, 16), (1, 1, 0, 5)])
def test_wrong_input_shape_gives_one_clear_line(shape):
    net = MSDNet(1, 2, depth=3)
    with pytest.raises(ValueError) as info:
        net(torch.zeros(shape))
    assert "\n" not in str(info.value) and "MSDNet" in str(info.value)


def test_config_rebuilds_the_same_architecture():
    net = MSDNet(2, 3, depth=8, width=2, dilations=[1, 2, 4, 8], ndim=3)
    twin = MSDNet(**net.config())
    twin.load_state_dict(net.state_dict())
    assert twin.schedule == net.schedule and twin.receptive_field == net.receptive_field
    x = torch.randn(1, 2, 5, 6, 7)
    assert torch.equal(net(x), twin(x))
