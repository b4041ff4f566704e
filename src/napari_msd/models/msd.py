"""Mixed-Scale Dense network (Pelt & Sethian, PNAS 2018), memory-efficient and fast.

Layer ``i``, channel ``j`` convolves *all* earlier feature maps (the input
included) with a 3x3 (3x3x3 in 3D) kernel dilated by
``dilations[(i * width + j) % len(dilations)]``, adds a bias and applies a ReLU.
The output is a 1x1 convolution over every map. Boundaries are reflective
(see :mod:`napari_msd.models.padding` for images smaller than a dilation).

Implementation: all maps live in one preallocated buffer of
``in_channels + width * depth`` maps. A layer's convolution is computed as a
matrix product ``taps = W @ buffer[:prefix]`` (one row per kernel tap, over a
zero-copy view of the buffer prefix) followed by a shifted sum of the reflect-
padded taps; padding commutes with the channel mixing, so only the few tap maps
are padded. The taps of ``block`` consecutive layers are mixed together, so the
prefix is read once per block instead of once per layer. A custom autograd
Function walks the layers in reverse in backward and accumulates into one
gradient buffer, so training stores about ``2 * (in + width * depth)`` maps
instead of the O(depth^2) a per-layer ``torch.cat`` keeps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from .checks import check_input
from .padding import reflect_pad, reflect_pad_adjoint

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


def _tap_slices(ndim: int, dilation: int, shape: Sequence[int]) -> list[tuple[slice, ...]]:
    """For each kernel tap (C order over the kernel), the window of the padded map it reads."""
    slices = []
    for offset in itertools.product((-1, 0, 1), repeat=ndim):
        start = [(o + 1) * dilation for o in offset]
        slices.append(tuple(slice(s, s + n) for s, n in zip(start, shape)))
    return slices


class _Scratch:
    """One growing flat tensor handing out contiguous views, so hot loops do not allocate."""

    def __init__(self, like: torch.Tensor):
        self._like = like
        self._flat = like.new_empty(0)

    def __call__(self, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        if self._flat.numel() < numel:
            self._flat = self._like.new_empty(numel)
        return self._flat[:numel].view(shape)


def _shift_sum(taps: torch.Tensor, dilation: int, out: torch.Tensor, scratch: _Scratch) -> None:
    """Write into ``out`` the sum of the reflect-padded taps, each shifted by its kernel offset.

    ``taps`` is ``(N, 3**ndim, *spatial)`` and ``out`` ``(N, *spatial)``.
    """
    ndim = taps.ndim - 2
    spatial = taps.shape[2:]
    padded_shape = (taps.shape[0], taps.shape[1], *[n + 2 * dilation for n in spatial])
    padded = reflect_pad(taps, dilation, ndim, out=scratch(*padded_shape))
    for k, window in enumerate(_tap_slices(ndim, dilation, spatial)):
        piece = padded[(slice(None), k) + window]
        if k == 0:
            out.copy_(piece)
        else:
            out.add_(piece)


def _shift_sum_adjoint(grad: torch.Tensor, dilation: int, out: torch.Tensor, scratch: _Scratch) -> None:
    """Adjoint of :func:`_shift_sum`: ``(N, *spatial)`` into ``out``, ``(N, 3**ndim, *spatial)``."""
    ndim = grad.ndim - 1
    spatial = grad.shape[1:]
    n_taps = 3**ndim
    padded_numel = grad.shape[0] * n_taps * math.prod(n + 2 * dilation for n in spatial)
    work = scratch(padded_numel + out.numel())
    padded = work[:padded_numel].view(grad.shape[0], n_taps, *[n + 2 * dilation for n in spatial]).zero_()
    for k, window in enumerate(_tap_slices(ndim, dilation, spatial)):
        padded[(slice(None), k) + window] = grad
    out.copy_(reflect_pad_adjoint(padded, dilation, ndim, out=work[padded_numel:].view(out.shape)))


def _tap_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``(w, C, 3, 3[, 3])`` kernel to ``(w * taps, C)`` rows, row ``j * taps + k``."""
    w, c = weight.shape[:2]
    return weight.reshape(w, c, -1).transpose(1, 2).reshape(-1, c)


def _blocks(depth: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, depth)) for start in range(0, depth, block)]


class _MSDFunction(torch.autograd.Function):
    """Forward and backward of all MS-D layers and the head over one feature buffer."""

    @staticmethod
    def forward(ctx, x, bias, head_weight, head_bias, schedule, block, *weights):
        n, c_in = x.shape[:2]
        spatial = x.shape[2:]
        width, depth = weights[0].shape[0], len(weights)
        n_maps = c_in + width * depth
        n_taps = 3 ** len(spatial)
        rows_per_layer = width * n_taps
        buf = x.new_empty((n, n_maps, *spatial))
        buf[:, :c_in] = x
        flat = buf.view(n, n_maps, -1)
        mats = [_tap_matrix(w).contiguous() for w in weights]
        mixed_scratch, pad_scratch = _Scratch(x), _Scratch(x)
        for start, stop in _blocks(depth, block):
            c_start = c_in + start * width
            block_mat = torch.cat([m[:, :c_start] for m in mats[start:stop]])
            mixed = mixed_scratch(n, block_mat.shape[0], flat.shape[2])
            for b in range(n):
                torch.mm(block_mat, flat[b, :c_start], out=mixed[b])
            for i in range(start, stop):
                c_i = c_in + i * width
                rows = mixed[:, (i - start) * rows_per_layer : (i - start + 1) * rows_per_layer]
                if c_i > c_start:
                    for b in range(n):
                        rows[b].addmm_(mats[i][:, c_start:c_i], flat[b, c_start:c_i])
                for j in range(width):
                    taps = rows[:, j * n_taps : (j + 1) * n_taps].view(n, n_taps, *spatial)
                    out = buf[:, c_i + j]
                    _shift_sum(taps, schedule[i][j], out, pad_scratch)
                    out.add_(bias[i * width + j]).clamp_(min=0)
        logits = torch.matmul(head_weight, flat) + head_bias[:, None]
        ctx.schedule, ctx.block = schedule, block
        ctx.save_for_backward(buf, head_weight, *weights)
        return logits.view(n, -1, *spatial)

    @staticmethod
    def backward(ctx, grad_logits):
        buf, head_weight, *weights = ctx.saved_tensors
        schedule, block = ctx.schedule, ctx.block
        n, n_maps = buf.shape[:2]
        spatial = buf.shape[2:]
        width, depth = weights[0].shape[0], len(weights)
        c_in = n_maps - width * depth
        n_taps = 3 ** len(spatial)
        rows_per_layer = width * n_taps
        flat = buf.view(n, n_maps, -1)
        g_out = grad_logits.reshape(n, grad_logits.shape[1], -1)

        grad_head_weight = head_weight.new_zeros(head_weight.shape)
        for b in range(n):  # per-sample products over transposed views: no copy of the buffer
            grad_head_weight.addmm_(g_out[b], flat[b].t())
        grad_head_bias = g_out.sum(dim=(0, 2))
        grad = torch.matmul(head_weight.t(), g_out)  # (N, maps, P): the one gradient buffer
        grad_bias = buf.new_zeros(width * depth)
        grad_mats = [buf.new_zeros((w.shape[0] * n_taps, w.shape[1])) for w in weights]
        mats = [_tap_matrix(w).contiguous() for w in weights]
        taps_scratch, pad_scratch = _Scratch(buf), _Scratch(buf)

        for start, stop in reversed(_blocks(depth, block)):
            c_start = c_in + start * width
            g_taps = taps_scratch(n, (stop - start) * rows_per_layer, flat.shape[2])
            for i in reversed(range(start, stop)):
                c_i = c_in + i * width
                g_layer = grad[:, c_i : c_i + width]
                g_layer.mul_(flat[:, c_i : c_i + width] > 0)  # ReLU'; this slice is final now
                grad_bias[i * width : (i + 1) * width] = g_layer.sum(dim=(0, 2))
                rows = g_taps[:, (i - start) * rows_per_layer : (i - start + 1) * rows_per_layer]
                for j in range(width):
                    out = rows[:, j * n_taps : (j + 1) * n_taps].view(n, n_taps, *spatial)
                    _shift_sum_adjoint(g_layer[:, j].view(n, *spatial), schedule[i][j], out, pad_scratch)
                if c_i > c_start:
                    for b in range(n):
                        grad[b, c_start:c_i].addmm_(mats[i][:, c_start:c_i].t(), rows[b])
                        grad_mats[i][:, c_start:c_i].addmm_(rows[b], flat[b, c_start:c_i].t())
            block_mat = torch.cat([m[:, :c_start] for m in mats[start:stop]])
            g_block = buf.new_zeros(block_mat.shape)
            for b in range(n):
                grad[b, :c_start].addmm_(block_mat.t(), g_taps[b])
                g_block.addmm_(g_taps[b], flat[b, :c_start].t())
            for i in range(start, stop):
                grad_mats[i][:, :c_start] = g_block[(i - start) * rows_per_layer : (i - start + 1) * rows_per_layer]

        grad_weights = [
            m.reshape(w.shape[0], n_taps, w.shape[1]).transpose(1, 2).reshape(w.shape)
            for m, w in zip(grad_mats, weights)
        ]
        grad_x = grad[:, :c_in].reshape(n, c_in, *spatial) if ctx.needs_input_grad[0] else None
        return (grad_x, grad_bias, grad_head_weight, grad_head_bias, None, None, *grad_weights)


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
        """``(N, in_channels, *spatial)`` to ``(N, out_channels, *spatial)`` logits."""
        check_input("MSDNet", x, self.in_channels, self.ndim)
        dtype = self.bias.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _MSDFunction.apply(
                x.to(dtype), self.bias, self.head_weight, self.head_bias, self.schedule, self.block, *self.weights
            )

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, depth={self.depth}, width={self.width}, "
            f"ndim={self.ndim}, dilations={list(self.dilations)}"
        )
