"""Forward and backward of all MS-D layers and the output layer over one feature buffer (see :mod:`.msd`).

A layer's dilated convolution over all earlier maps is a matrix product ``taps = W @ buffer[:prefix]`` (one row per
kernel tap, ``3**ndim`` per channel) followed by a shifted sum of the reflect-padded taps; padding commutes with the
channel mixing, so the prefix itself is never padded per layer. The taps of ``block`` consecutive layers are
mixed together, so the prefix is read once per block. Backward walks the layers in reverse and accumulates into one
gradient buffer: training stores about ``2 * (in + width * depth)`` maps, not the O(depth^2) of concatenation.

Two layouts of the buffer (:func:`layout_for` picks one):

- :class:`PaddedTaps`: maps stored as they are; every layer pads its tap maps (for small tiles and 3D blocks).
- :class:`Framed`: every map is stored inside a frame of ``pad`` pixels (the largest dilation) holding its
  reflection, filled once when the map is made. The product over the framed buffer then gives framed taps and the
  shifted sum reads their windows directly: no padding per layer, at the price of the frame's share of every
  product (8% at 512 x 512, 2.3x for a 64^3 block).

Products run over the whole batch at once (broadcast matrix products), not sample by sample: at a training batch of
16 x 64 x 64 the Python loop cost a third of a step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from .padding import mirror_index, reflect_pad

# The framed layout serves inputs whose frame adds at most this share of pixels: 2D tiles of about 150 px and more
# at the default dilations (a training batch of 64 x 64 patches pads its taps: its frame would add 72%).
FRAMED_MAX_GROWTH = 1.3


class Scratch:
    """One growing flat tensor handing out contiguous views, so hot loops do not allocate."""

    def __init__(self, like: torch.Tensor):
        self._like = like
        self._flat = like.new_empty(0)

    def __call__(self, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        if self._flat.numel() < numel:
            self._flat = self._like.new_empty(numel)
        return self._flat[:numel].view(shape)


class Frame:
    """A reflective frame of ``pad`` pixels around maps of interior shape ``spatial``, in tensors
    ``(N, C, *framed)``: :meth:`fill` writes the reflection (repeated where an axis is not longer than ``pad``),
    :meth:`fold` is its adjoint (adds the frame's gradient onto the interior pixels it copies)."""

    def __init__(self, spatial: tuple[int, ...], pad: int, device: torch.device):
        self.pad, self.spatial = pad, spatial
        self.interior = tuple(slice(pad, pad + n) for n in spatial)
        self.framed = tuple(n + 2 * pad for n in spatial)
        self._axes = []
        for n in spatial:
            source = mirror_index(n, pad, pad, device) + pad
            frame = torch.cat([torch.arange(pad, device=device), torch.arange(pad + n, n + 2 * pad, device=device)])
            self._axes.append((frame, source[frame]))

    def inside(self, t: torch.Tensor) -> torch.Tensor:
        """The interior of framed maps ``(N, C, *framed)``, a view."""
        return t[(slice(None), slice(None)) + self.interior]

    def windows(self, dilation: int) -> list[tuple[slice, ...]]:
        """For each kernel tap (C order over the kernel), the window of a framed map that lands on the interior
        when shifted by the tap's offset at ``dilation`` (at most ``pad``)."""
        return [
            tuple(slice(self.pad + o * dilation, self.pad + o * dilation + n) for o, n in zip(offset, self.spatial))
            for offset in itertools.product((-1, 0, 1), repeat=len(self.spatial))
        ]

    def tap_windows(self, taps: torch.Tensor, dilation: int) -> torch.Tensor:
        """All the windows of framed tap maps ``(N, 3**ndim, *framed)`` at once, as one strided view
        ``(N, 3, ..., 3, *spatial)`` (tap ``k`` at the kernel position of C order): one copy fills them all."""
        ndim = len(self.spatial)
        batch, channel, *axes = taps.stride()
        size = (taps.shape[0],) + (3,) * ndim + self.spatial
        strides = (batch, *(channel * 3 ** (ndim - 1 - a) + dilation * axes[a] for a in range(ndim)), *axes)
        start = taps.storage_offset() + sum((self.pad - dilation) * step for step in axes)
        return taps.as_strided(size, strides, start)

    def _along(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        # axes before ``axis`` whole (their frame is filled first), axes after it interior only
        index = tuple(slice(None) if b <= axis else s for b, s in enumerate(self.interior))
        return t[(slice(None), slice(None)) + index]

    def fill(self, t: torch.Tensor) -> None:
        """Write the reflection of the interior into the frame, in place."""
        for axis, (frame, source) in enumerate(self._axes):
            view, dim, n, pad = self._along(t, axis), 2 + axis, self.spatial[axis], self.pad
            if n > pad:  # one mirror: two reversed slabs (an index_select along the last axis is 2x slower)
                view.narrow(dim, 0, pad).copy_(view.narrow(dim, pad + 1, pad).flip(dim))
                view.narrow(dim, pad + n, pad).copy_(view.narrow(dim, n - 1, pad).flip(dim))
            else:
                view.index_copy_(dim, frame, view.index_select(dim, source))

    def fold(self, g: torch.Tensor) -> None:
        """Adjoint of :meth:`fill`: add the gradient on the frame onto the interior; the frame is then spent."""
        for axis in reversed(range(len(self._axes))):
            frame, source = self._axes[axis]
            view, dim, n, pad = self._along(g, axis), 2 + axis, self.spatial[axis], self.pad
            if n > pad:
                view.narrow(dim, pad + 1, pad).add_(view.narrow(dim, 0, pad).flip(dim))
                view.narrow(dim, n - 1, pad).add_(view.narrow(dim, pad + n, pad).flip(dim))
            else:
                view.index_add_(dim, source, view.index_select(dim, frame))


class PaddedTaps:
    """Maps stored as they are; each layer reflect-pads its tap maps by its dilation before the shifted sum."""

    def __init__(self, spatial: tuple[int, ...], dilations: set[int], device: torch.device):
        self.spatial = self.stored = spatial
        self._frames = {d: Frame(spatial, d, device) for d in dilations}
        self._windows = {d: frame.windows(d) for d, frame in self._frames.items()}

    def inside(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def made(self, maps: torch.Tensor) -> None:
        """Maps ``(N, C, *stored)`` just written: nothing to add."""

    def settle(self, grad: torch.Tensor) -> None:
        """The gradient of maps ``(N, C, *stored)`` is complete: nothing to fold."""

    def shift_sum(self, taps: torch.Tensor, dilation: int, out: torch.Tensor, scratch: Scratch) -> None:
        """Into ``out`` ``(N, *spatial)``: the sum of the taps ``(N, 3**ndim, *stored)``, reflect-padded and each
        shifted by its kernel offset at ``dilation``."""
        frame = self._frames[dilation]
        padded = reflect_pad(taps, dilation, taps.ndim - 2, out=scratch(*taps.shape[:2], *frame.framed))
        _sum_windows(padded, self._windows[dilation], out)

    def shift_sum_adjoint(self, grad: torch.Tensor, dilation: int, out: torch.Tensor, scratch: Scratch) -> None:
        """Adjoint of :meth:`shift_sum`: ``grad`` ``(N, *spatial)`` into ``out`` ``(N, 3**ndim, *stored)``. The
        padding's adjoint is :meth:`Frame.fold`: torch's reflection-pad backward kernel took 2-4x longer."""
        frame = self._frames[dilation]
        padded = scratch(*out.shape[:2], *frame.framed).zero_()
        _spread(frame.tap_windows(padded, dilation), grad)
        frame.fold(padded)
        out.copy_(frame.inside(padded))


class Framed:
    """Maps stored inside a reflective frame of the largest dilation; the shifted sum reads framed taps directly."""

    def __init__(self, spatial: tuple[int, ...], dilations: set[int], device: torch.device):
        self.spatial = spatial
        self._frame = Frame(spatial, max(dilations), device)
        self.stored = self._frame.framed
        self._windows = {d: self._frame.windows(d) for d in dilations}

    def inside(self, t: torch.Tensor) -> torch.Tensor:
        return self._frame.inside(t)

    def made(self, maps: torch.Tensor) -> None:
        """Maps ``(N, C, *stored)`` whose interior was just written: fill their frame."""
        self._frame.fill(maps)

    def settle(self, grad: torch.Tensor) -> None:
        """The gradient of maps ``(N, C, *stored)`` is complete: fold its frame onto the interior."""
        self._frame.fold(grad)

    def shift_sum(self, taps: torch.Tensor, dilation: int, out: torch.Tensor, scratch: Scratch) -> None:
        _sum_windows(taps, self._windows[dilation], out)

    def shift_sum_adjoint(self, grad: torch.Tensor, dilation: int, out: torch.Tensor, scratch: Scratch) -> None:
        _spread(self._frame.tap_windows(out.zero_(), dilation), grad)


Layout = PaddedTaps | Framed


def _sum_windows(taps: torch.Tensor, windows: Sequence[tuple[slice, ...]], out: torch.Tensor) -> None:
    for k, window in enumerate(windows):
        piece = taps[(slice(None), k) + window]
        if k == 0:
            out.copy_(piece)
        else:
            out.add_(piece)


def _spread(windows: torch.Tensor, grad: torch.Tensor) -> None:
    """Copy ``grad`` ``(N, *spatial)`` into every tap's window ``(N, 3, ..., 3, *spatial)`` (one op, not 3**ndim)."""
    ndim = grad.ndim - 1
    windows.copy_(grad.view(grad.shape[0], *(1,) * ndim, *grad.shape[1:]).expand(windows.shape))


def layout_for(spatial: tuple[int, ...], schedule: Sequence[Sequence[int]], device: torch.device) -> Layout:
    """The framed layout where its frame adds at most ``FRAMED_MAX_GROWTH`` of the pixels, else padded taps."""
    dilations = {d for layer in schedule for d in layer}
    growth = math.prod((n + 2 * max(dilations)) / n for n in spatial)
    kind = Framed if growth <= FRAMED_MAX_GROWTH else PaddedTaps
    return kind(spatial, dilations, device)


def tap_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``(w, C, 3, 3[, 3])`` kernel to ``(w * taps, C)`` rows, row ``j * taps + k``."""
    w, c = weight.shape[:2]
    return weight.reshape(w, c, -1).transpose(1, 2).reshape(-1, c)


def layer_blocks(depth: int, block: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of ``block`` consecutive layers whose taps are mixed together."""
    return [(start, min(start + block, depth)) for start in range(0, depth, block)]


class MSDFunction(torch.autograd.Function):
    """All MS-D layers and the output layer; ``apply(x, bias, head_weight, head_bias, schedule, block, *weights)``."""

    @staticmethod
    def forward(ctx, x, bias, head_weight, head_bias, schedule, block, *weights):
        n, c_in = x.shape[:2]
        width, depth = weights[0].shape[0], len(weights)
        n_maps = c_in + width * depth
        n_taps = 3 ** (x.ndim - 2)
        rows_per_layer = width * n_taps
        layout = layout_for(tuple(x.shape[2:]), schedule, x.device)
        buf = x.new_empty((n, n_maps, *layout.stored))
        layout.inside(buf[:, :c_in]).copy_(x)
        layout.made(buf[:, :c_in])
        flat = buf.view(n, n_maps, -1)
        mats = [tap_matrix(w).contiguous() for w in weights]
        mixed_scratch, pad_scratch = Scratch(x), Scratch(x)
        for start, stop in layer_blocks(depth, block):
            c_start = c_in + start * width
            block_mat = torch.cat([m[:, :c_start] for m in mats[start:stop]])
            mixed = mixed_scratch(n, block_mat.shape[0], flat.shape[2])
            torch.matmul(block_mat, flat[:, :c_start], out=mixed)
            for i in range(start, stop):
                c_i = c_in + i * width
                rows = mixed[:, (i - start) * rows_per_layer : (i - start + 1) * rows_per_layer]
                if c_i > c_start:  # the maps made earlier in this block
                    part = mats[i][:, c_start:c_i]
                    rows.baddbmm_(part.expand(n, *part.shape), flat[:, c_start:c_i])
                layer = layout.inside(buf[:, c_i : c_i + width])
                for j in range(width):
                    taps = rows[:, j * n_taps : (j + 1) * n_taps].view(n, n_taps, *layout.stored)
                    out = layer[:, j]
                    layout.shift_sum(taps, schedule[i][j], out, pad_scratch)
                    out.add_(bias[i * width + j]).clamp_(min=0)
                layout.made(buf[:, c_i : c_i + width])
        logits = torch.matmul(head_weight, flat) + head_bias[:, None]
        ctx.schedule, ctx.block, ctx.layout = schedule, block, layout
        ctx.save_for_backward(buf, head_weight, *weights)
        return layout.inside(logits.view(n, -1, *layout.stored)).contiguous()

    @staticmethod
    def backward(ctx, grad_logits):
        buf, head_weight, *weights = ctx.saved_tensors
        schedule, block, layout = ctx.schedule, ctx.block, ctx.layout
        n, n_maps = buf.shape[:2]
        width, depth = weights[0].shape[0], len(weights)
        c_in = n_maps - width * depth
        n_taps = 3 ** len(layout.spatial)
        rows_per_layer = width * n_taps
        flat = buf.view(n, n_maps, -1)
        sums = (0, *range(2, grad_logits.ndim))  # over the batch and the pixels
        if layout.stored == layout.spatial:
            g_out = grad_logits.reshape(n, grad_logits.shape[1], -1)
        else:  # the frame's logits were not returned: no gradient there
            g_stored = grad_logits.new_zeros((n, grad_logits.shape[1], *layout.stored))
            layout.inside(g_stored).copy_(grad_logits)
            g_out = g_stored.view(n, grad_logits.shape[1], -1)

        grad_head_weight = torch.matmul(g_out, flat.transpose(1, 2)).sum(0)
        grad_head_bias = grad_logits.sum(dim=sums)
        grad = torch.matmul(head_weight.t(), g_out)  # (N, maps, P): the one gradient buffer
        grad_maps = grad.view(n, n_maps, *layout.stored)
        grad_bias = buf.new_zeros(width * depth)
        grad_mats = [buf.new_zeros((w.shape[0] * n_taps, w.shape[1])) for w in weights]
        mats = [tap_matrix(w).contiguous() for w in weights]
        taps_scratch, pad_scratch = Scratch(buf), Scratch(buf)

        for start, stop in reversed(layer_blocks(depth, block)):
            c_start = c_in + start * width
            g_taps = taps_scratch(n, (stop - start) * rows_per_layer, flat.shape[2])
            for i in reversed(range(start, stop)):
                c_i = c_in + i * width
                layout.settle(grad_maps[:, c_i : c_i + width])  # every later layer has added its share by now
                g_layer = layout.inside(grad_maps[:, c_i : c_i + width])
                g_layer.mul_(layout.inside(buf[:, c_i : c_i + width]) > 0)  # ReLU'
                grad_bias[i * width : (i + 1) * width] = g_layer.sum(dim=sums)
                rows = g_taps[:, (i - start) * rows_per_layer : (i - start + 1) * rows_per_layer]
                for j in range(width):
                    out = rows[:, j * n_taps : (j + 1) * n_taps].view(n, n_taps, *layout.stored)
                    layout.shift_sum_adjoint(g_layer[:, j], schedule[i][j], out, pad_scratch)
                if c_i > c_start:
                    part = mats[i][:, c_start:c_i].t()
                    grad[:, c_start:c_i].baddbmm_(part.expand(n, *part.shape), rows)
                    grad_mats[i][:, c_start:c_i] += torch.matmul(rows, flat[:, c_start:c_i].transpose(1, 2)).sum(0)
            block_mat = torch.cat([m[:, :c_start] for m in mats[start:stop]]).t()
            grad[:, :c_start].baddbmm_(block_mat.expand(n, *block_mat.shape), g_taps)
            g_block = torch.matmul(g_taps, flat[:, :c_start].transpose(1, 2)).sum(0)
            for i in range(start, stop):
                grad_mats[i][:, :c_start] = g_block[(i - start) * rows_per_layer : (i - start + 1) * rows_per_layer]

        grad_weights = [
            m.reshape(w.shape[0], n_taps, w.shape[1]).transpose(1, 2).reshape(w.shape)
            for m, w in zip(grad_mats, weights)
        ]
        grad_x = None
        if ctx.needs_input_grad[0]:
            layout.settle(grad_maps[:, :c_in])
            grad_x = layout.inside(grad_maps[:, :c_in]).contiguous()
        return (grad_x, grad_bias, grad_head_weight, grad_head_bias, None, None, *grad_weights)
