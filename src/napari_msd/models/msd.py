"""Mixed-Scale Dense network (Pelt & Sethian, PNAS 2018), memory-efficient and fast.

Layer ``i``, channel ``j`` convolves *all* earlier feature maps (the input
included) with a 3x3 (3x3x3 in 3D) kernel dilated by
``dilations[(i * width + j) % len(dilations)]``, adds a bias and applies a ReLU.
The output is a 1x1 convolution over every map. Boundaries are reflective
(see :mod:`napari_msd.models.padding` for images smaller than a dilation).

Implementation (:mod:`.msd_kernel`): all maps live in one preallocated buffer of
``in_channels + width * depth`` maps; a layer's convolution is a matrix product
over a zero-copy view of the buffer prefix followed by a shifted sum of the few
tap maps, and backward accumulates into one gradient buffer, so training stores
about ``2 * (in + width * depth)`` maps instead of the O(depth^2) a per-layer
``torch.cat`` keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .checks import check_input
from .msd_kernel import MSDFunction
from .precision import held_products, inference_dtype

DEFAULT_DILATIONS = tuple(range(1, 11))


def msd_parameter_count(in_channels: int, out_channels: int, depth: int, width: int, ndim: int = 2) -> int:
    """The paper's N_par = N_flts + N_wgts + N_bias (27 taps instead of 9 in 3D)."""
    taps = 3**ndim
    n_filters = taps * sum(width * (i * width + in_channels) for i in range(depth))
    n_weights = (width * depth + in_channels) * out_channels
    n_bias = width * depth + out_channels
    return n_filters + n_weights + n_bias


def msd_dilation_schedule(depth: int, width: int, dilations: Sequence[int]) -> list[list[int]]:
    """Dilation of every channel: ``schedule[i][j] = dilations[(i * width + j) % len(dilations)]``."""
    return [[int(dilations[(i * width + j) % len(dilations)]) for j in range(width)] for i in range(depth)]


class MSDNet(nn.Module):
    """Mixed-Scale Dense network for 2D or 3D images.

    Parameters follow the paper: ``depth`` layers of ``width`` channels, 3x3
    (3x3x3) dilated kernels with dilations cycling through ``dilations``, a 1x1
    output layer over all maps, no normalisation. ``block`` only changes speed
    (layers whose taps are mixed together), never the result.
    """

    arch = "msd"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 100,
        width: int = 1,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        ndim: int = 2,
        block: int = 4,
    ):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("depth", depth),
            ("width", width),
            ("block", block),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations must be positive integers, got {dilations}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.depth, self.width, self.ndim, self.block = int(depth), int(width), int(ndim), int(block)
        self.dilations = dilations
        self.schedule = msd_dilation_schedule(self.depth, self.width, dilations)
        kernel = (3,) * ndim
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(width, in_channels + i * width, *kernel)) for i in range(depth)
        )
        self.bias = nn.Parameter(torch.zeros(width * depth))
        self.head_weight = nn.Parameter(torch.zeros(out_channels, in_channels + width * depth))
        self.head_bias = nn.Parameter(torch.zeros(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Paper initialisation: N(0, sqrt(2 / n_c)) filters; head and biases zero."""
        n_c = 3**self.ndim * (self.in_channels + self.width * (self.depth - 1)) + self.out_channels
        std = math.sqrt(2.0 / n_c)
        with torch.no_grad():
            for w in self.weights:
                w.normal_(0.0, std)
            self.bias.zero_()
            self.head_weight.zero_()
            self.head_bias.zero_()

    @property
    def receptive_field(self) -> int:
        """Theoretical radius in pixels: the sum over layers of the largest dilation."""
        return sum(max(layer) for layer in self.schedule)

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the architecture."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": self.depth,
            "width": self.width,
            "dilations": list(self.dilations),
            "ndim": self.ndim,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, *spatial)`` to ``(N, out_channels, *spatial)`` logits, in the parameters' dtype.
        Without gradients, float32 networks compute in :func:`~napari_msd.models.precision.inference_dtype`; with
        them, their products run in the dtype a training holds (:func:`~napari_msd.models.precision.held_products`,
        float32 by default), gradients and parameters staying float32."""
        check_input("MSDNet", x, self.in_channels, self.ndim)
        dtype = self.bias.dtype
        params = [self.bias, self.head_weight, self.head_bias, *self.weights]
        products = dtype
        if dtype == torch.float32:
            if not torch.is_grad_enabled():
                compute = inference_dtype(x.device)
                if compute != dtype:
                    params = [p.to(compute) for p in params]
                    products = compute
            else:
                products = held_products() or dtype
        bias, head_weight, head_bias, *weights = params
        reduced = bias.dtype != dtype  # its output bias is added in full precision (a prior correction's shift)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = MSDFunction.apply(
                x.to(bias.dtype),
                bias,
                head_weight,
                torch.zeros_like(head_bias) if reduced else head_bias,
                self.schedule,
                self.block,
                products,
                *weights,
            )
        if not reduced:
            return out
        return out.to(dtype) + self.head_bias.view(1, -1, *(1,) * self.ndim)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, depth={self.depth}, width={self.width}, "
            f"ndim={self.ndim}, dilations={list(self.dilations)}"
        )
