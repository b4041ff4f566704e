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

Two arrangements of a batch in memory (:func:`storage_for` picks one by the products' dtype): :class:`SampleMajor`
``(N, maps, *stored)``, whose products are batched matrix products, one per sample (MKL's float32 products run
faster so), and :class:`MapsFirst` ``(maps, N, *stored)``, where a map of every sample is one row of
``maps x (N * pixels)`` and every product is one plain matrix product over the whole batch (oneDNN's bfloat16
products run faster so). The layouts see maps and taps as ``(C, N, *stored)`` views either way.

Products may run in a lower precision than the parameters (``products``, :mod:`.precision`): bfloat16 on CPUs that
multiply it natively several times faster. The maps are then stored in bfloat16 (each layer's shifted sum, bias and
ReLU computed in float32 and rounded once), while the gradient buffer, the parameters and their gradients stay
float32: every product's result is added into float32.
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
    ``(A, B, *framed)`` (any two leading axes): :meth:`fill` writes the reflection (repeated where an axis is not
    longer than ``pad``), :meth:`fold` is its adjoint (adds the frame's gradient onto the interior pixels it copies)."""

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
        """The interior of framed maps ``(A, B, *framed)``, a view."""
        return t[(slice(None), slice(None)) + self.interior]

    def windows(self, dilation: int) -> list[tuple[slice, ...]]:
        """For each kernel tap (C order over the kernel), the window of a framed map that lands on the interior
        when shifted by the tap's offset at ``dilation`` (at most ``pad``)."""
        return [
            tuple(slice(self.pad + o * dilation, self.pad + o * dilation + n) for o, n in zip(offset, self.spatial))
            for offset in itertools.product((-1, 0, 1), repeat=len(self.spatial))
        ]

    def tap_windows(self, taps: torch.Tensor, dilation: int) -> torch.Tensor:
        """All the windows of framed tap maps ``(3**ndim, N, *framed)`` at once, as one strided view
        ``(3, ..., 3, N, *spatial)`` (tap ``k`` at the kernel position of C order): one copy fills them all."""
        ndim = len(self.spatial)
        tap, batch, *axes = taps.stride()
        size = (3,) * ndim + (taps.shape[1],) + self.spatial
        strides = (*(tap * 3 ** (ndim - 1 - a) + dilation * axes[a] for a in range(ndim)), batch, *axes)
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
        """Maps ``(C, N, *stored)`` just written: nothing to add."""

    def settle(self, grad: torch.Tensor) -> None:
        """The gradient of maps ``(C, N, *stored)`` is complete: nothing to fold."""

    def shift_sum(self, taps: torch.Tensor, dilation: int, out: torch.Tensor, scratch: Scratch) -> None:
        """Into ``out`` ``(N, *spatial)``: the sum of the taps ``(3**ndim, N, *stored)``, reflect-padded and each
        shifted by its kernel offset at ``dilation``."""
        frame = self._frames[dilation]
        swap = taps.stride(0) < taps.stride(1)  # sample-major taps: padded as (N, taps, ...), their memory order
        source = taps.transpose(0, 1) if swap else taps
        padded = reflect_pad(source, dilation, taps.ndim - 2, out=scratch(*source.shape[:2], *frame.framed))
        _sum_windows(padded.transpose(0, 1) if swap else padded, self._windows[dilation], out)

    def shift_sum_adjoint(self, grad: torch.Tensor, dilation: int, out: torch.Tensor, scratch: Scratch) -> None:
        """Adjoint of :meth:`shift_sum`: ``grad`` ``(N, *spatial)`` into ``out`` ``(3**ndim, N, *stored)``. The
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
        """Maps ``(C, N, *stored)`` whose interior was just written: fill their frame."""
        self._frame.fill(maps)

    def settle(self, grad: torch.Tensor) -> None:
        """The gradient of maps ``(C, N, *stored)`` is complete: fold its frame onto the interior."""
        self._frame.fold(grad)

    def shift_sum(self, taps: torch.Tensor, dilation: int, out: torch.Tensor, scratch: Scratch) -> None:
        _sum_windows(taps, self._windows[dilation], out)

    def shift_sum_adjoint(self, grad: torch.Tensor, dilation: int, out: torch.Tensor, scratch: Scratch) -> None:
        _spread(self._frame.tap_windows(out.zero_(), dilation), grad)


Layout = PaddedTaps | Framed


def _sum_windows(taps: torch.Tensor, windows: Sequence[tuple[slice, ...]], out: torch.Tensor) -> None:
    for k, window in enumerate(windows):
        piece = taps[(k, slice(None)) + window]
        if k == 0:
            out.copy_(piece)
        else:
            out.add_(piece)


def _spread(windows: torch.Tensor, grad: torch.Tensor) -> None:
    """Copy ``grad`` ``(N, *spatial)`` into every tap's window ``(3, ..., 3, N, *spatial)`` (one op, not 3**ndim)."""
    windows.copy_(grad.expand(windows.shape))


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


class SampleMajor:
    """Maps stored ``(N, maps, *stored)``; products are batched, one matrix product per sample (MKL's float32
    products of MS-D's skinny shapes ran 1.3-2x faster per sample than over the whole batch at once)."""

    def __init__(self, n: int, stored: tuple[int, ...]):
        self.n, self.stored = n, stored

    def empty(self, like: torch.Tensor, maps: int, dtype: torch.dtype) -> torch.Tensor:
        return like.new_empty((self.n, maps, *self.stored), dtype=dtype)

    def flat(self, t: torch.Tensor) -> torch.Tensor:
        """A stored tensor as matrices: ``(N, maps, pixels)``."""
        return t.view(self.n, t.shape[1], -1)

    def maps(self, t: torch.Tensor) -> torch.Tensor:
        """A stored tensor (or its flat form) as ``(maps, N, *stored)``, a view."""
        return t.view(self.n, t.shape[1], *self.stored).transpose(0, 1)

    def scratch(self, scratch: Scratch, rows: int) -> torch.Tensor:
        return scratch(self.n, rows, math.prod(self.stored))

    @staticmethod
    def rows(flat: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return flat[:, start:stop]

    @staticmethod
    def product(mat: torch.Tensor, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.matmul(mat, src, out=out)

    def add_product(self, into: torch.Tensor, mat: torch.Tensor, src: torch.Tensor, scratch: Scratch) -> None:
        """``into += mat @ src`` per sample; a product in a lower precision than ``into`` lands in ``scratch``."""
        if mat.dtype == into.dtype:
            into.baddbmm_(mat.expand(self.n, *mat.shape), src)
        else:
            into.add_(torch.matmul(mat, src, out=self.scratch(scratch, mat.shape[0])))

    @staticmethod
    def weight_grad(g: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """``sum over samples of g @ src^T``."""
        return torch.matmul(g, src.transpose(1, 2)).sum(0)


class MapsFirst(SampleMajor):
    """Maps stored ``(maps, N, *stored)``: a map of every sample is one row of ``maps x (N * pixels)``, and every
    product is one plain matrix product over the whole batch (oneDNN's bfloat16 products: 1.5-2x faster so)."""

    def empty(self, like: torch.Tensor, maps: int, dtype: torch.dtype) -> torch.Tensor:
        return like.new_empty((maps, self.n, *self.stored), dtype=dtype)

    def flat(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], -1)

    def maps(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], self.n, *self.stored)

    def scratch(self, scratch: Scratch, rows: int) -> torch.Tensor:
        return scratch(rows, self.n * math.prod(self.stored))

    @staticmethod
    def rows(flat: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return flat[start:stop]

    @staticmethod
    def product(mat: torch.Tensor, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.mm(mat, src, out=out)

    def add_product(self, into: torch.Tensor, mat: torch.Tensor, src: torch.Tensor, scratch: Scratch) -> None:
        if mat.dtype == into.dtype:
            into.addmm_(mat, src)
        else:
            into.add_(torch.mm(mat, src, out=self.scratch(scratch, mat.shape[0])))

    @staticmethod
    def weight_grad(g: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        return torch.mm(g, src.t())


Storage = SampleMajor | MapsFirst


def storage_for(n: int, stored: tuple[int, ...], products: torch.dtype) -> Storage:
    """Maps-first for bfloat16 products, sample-major otherwise (each the faster for its products on CPU)."""
    return (MapsFirst if products == torch.bfloat16 else SampleMajor)(n, stored)


class MSDFunction(torch.autograd.Function):
    """All MS-D layers and the output layer;
    ``apply(x, bias, head_weight, head_bias, schedule, block, products, *weights)``, ``products`` the dtype of the
    matrix products and stored maps (the parameters' own, or bfloat16 for float32 parameters)."""

    @staticmethod
    def forward(ctx, x, bias, head_weight, head_bias, schedule, block, products, *weights):
        n, c_in = x.shape[:2]
        width, depth = weights[0].shape[0], len(weights)
        n_maps = c_in + width * depth
        n_taps = 3 ** (x.ndim - 2)
        rows_per_layer = width * n_taps
        layout = layout_for(tuple(x.shape[2:]), schedule, x.device)
        store = storage_for(n, layout.stored, products)
        buf = store.empty(x, n_maps, products)
        maps, flat = store.maps(buf), store.flat(buf)
        layout.inside(maps[:c_in]).copy_(x.transpose(0, 1))
        layout.made(maps[:c_in])
        mats = [tap_matrix(w).to(products).contiguous() for w in weights]
        mixed_scratch, product_scratch = Scratch(buf), Scratch(buf)
        # taps, their padding and sums in the parameters' precision; maps stored rounded to the products' dtype
        rounded = products != bias.dtype
        wide_scratch, pad_scratch, sum_scratch = Scratch(bias), Scratch(bias), Scratch(bias)
        for start, stop in layer_blocks(depth, block):
            c_start = c_in + start * width
            block_mat = torch.cat([m[:, :c_start] for m in mats[start:stop]])
            mixed = store.product(block_mat, store.rows(flat, 0, c_start), store.scratch(mixed_scratch, len(block_mat)))
            if rounded:  # one conversion per block, not one per tap
                mixed = store.scratch(wide_scratch, len(block_mat)).copy_(mixed)
            for i in range(start, stop):
                c_i = c_in + i * width
                rows = store.rows(mixed, (i - start) * rows_per_layer, (i - start + 1) * rows_per_layer)
                if c_i > c_start:  # the maps made earlier in this block
                    store.add_product(rows, mats[i][:, c_start:c_i], store.rows(flat, c_start, c_i), product_scratch)
                taps = store.maps(rows)  # (width * taps, N, *stored)
                for j in range(width):
                    stored = layout.inside(maps[c_i + j : c_i + j + 1])[0]  # (N, *spatial)
                    out = sum_scratch(*stored.shape) if rounded else stored
                    layout.shift_sum(taps[j * n_taps : (j + 1) * n_taps], schedule[i][j], out, pad_scratch)
                    out.add_(bias[i * width + j]).clamp_(min=0)
                    if rounded:
                        stored.copy_(out)
                layout.made(maps[c_i : c_i + width])
        logits = store.maps(
            store.product(head_weight.to(products), flat, store.scratch(Scratch(buf), len(head_weight)))
        )
        ctx.schedule, ctx.block, ctx.layout, ctx.store = schedule, block, layout, store
        ctx.save_for_backward(buf, head_weight, *weights)
        out = layout.inside(logits).transpose(0, 1).to(head_bias.dtype)
        return out.add_(head_bias.view(1, -1, *(1,) * (x.ndim - 2))).contiguous()

    @staticmethod
    def backward(ctx, grad_logits):
        buf, head_weight, *weights = ctx.saved_tensors
        schedule, block, layout, store = ctx.schedule, ctx.block, ctx.layout, ctx.store
        products, dtype = buf.dtype, head_weight.dtype
        maps, flat = store.maps(buf), store.flat(buf)
        n_maps = maps.shape[0]
        width, depth = weights[0].shape[0], len(weights)
        c_in = n_maps - width * depth
        n_taps = 3 ** len(layout.spatial)
        rows_per_layer = width * n_taps
        like = grad_logits.new_empty(0, dtype=dtype)
        g_stored = store.empty(like, grad_logits.shape[1], dtype).zero_()  # the frame's logits were not returned
        layout.inside(store.maps(g_stored)).copy_(grad_logits.transpose(0, 1))
        g_out = store.flat(g_stored)
        grad_head_weight = store.weight_grad(g_out.to(products), flat).to(dtype)
        grad_head_bias = grad_logits.sum(dim=(0, *range(2, grad_logits.ndim)))
        grad = store.empty(like, n_maps, dtype)  # the one gradient buffer, in full precision
        store.product(head_weight.t(), g_out, store.flat(grad))
        grad_maps, grad_flat = store.maps(grad), store.flat(grad)
        grad_bias = like.new_zeros(width * depth)
        grad_mats = [like.new_zeros((w.shape[0] * n_taps, w.shape[1])) for w in weights]
        mats = [tap_matrix(w).to(products).contiguous() for w in weights]
        taps_scratch, pad_scratch = Scratch(like), Scratch(like)
        low_scratch, product_scratch = Scratch(buf), Scratch(buf)
        for start, stop in reversed(layer_blocks(depth, block)):
            c_start = c_in + start * width
            g_taps = store.scratch(taps_scratch, (stop - start) * rows_per_layer)  # in full precision
            for i in reversed(range(start, stop)):
                c_i = c_in + i * width
                layout.settle(grad_maps[c_i : c_i + width])  # every later layer has added its share by now
                g_layer = layout.inside(grad_maps[c_i : c_i + width])  # (width, N, *spatial)
                g_layer.mul_(layout.inside(maps[c_i : c_i + width]) > 0)  # ReLU'
                grad_bias[i * width : (i + 1) * width] = g_layer.sum(dim=tuple(range(1, g_layer.ndim)))
                rows = store.rows(g_taps, (i - start) * rows_per_layer, (i - start + 1) * rows_per_layer)
                taps = store.maps(rows)
                for j in range(width):
                    out = taps[j * n_taps : (j + 1) * n_taps]
                    layout.shift_sum_adjoint(g_layer[j], schedule[i][j], out, pad_scratch)
                if c_i > c_start:
                    low = rows if products == dtype else store.scratch(low_scratch, rows_per_layer).copy_(rows)
                    part = mats[i][:, c_start:c_i].t()
                    store.add_product(store.rows(grad_flat, c_start, c_i), part, low, product_scratch)
                    grad_mats[i][:, c_start:c_i] += store.weight_grad(low, store.rows(flat, c_start, c_i))
            block_rows = (stop - start) * rows_per_layer
            low = g_taps if products == dtype else store.scratch(low_scratch, block_rows).copy_(g_taps)
            block_mat = torch.cat([m[:, :c_start] for m in mats[start:stop]]).t()
            store.add_product(store.rows(grad_flat, 0, c_start), block_mat, low, product_scratch)
            g_block = store.weight_grad(low, store.rows(flat, 0, c_start))
            for i in range(start, stop):
                grad_mats[i][:, :c_start] = g_block[(i - start) * rows_per_layer : (i - start + 1) * rows_per_layer]

        grad_weights = [
            m.reshape(w.shape[0], n_taps, w.shape[1]).transpose(1, 2).reshape(w.shape)
            for m, w in zip(grad_mats, weights)
        ]
        grad_x = None
        if ctx.needs_input_grad[0]:
            layout.settle(grad_maps[:c_in])
            grad_x = layout.inside(grad_maps[:c_in]).transpose(0, 1).contiguous()
        return (grad_x, grad_bias, grad_head_weight, grad_head_bias, None, None, None, *grad_weights)
