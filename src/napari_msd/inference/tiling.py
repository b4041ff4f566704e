"""Crop-and-stitch tiling: blocks that tile an image exactly, each read with a halo of context.

A :class:`Block` has an output region ``out`` (blocks tile the image on a regular grid of
``block_shape``, so they can match the chunks of an output zarr array) and an input region
``inp``: ``out`` grown by ``halo`` on each side and clipped to the image. Clipping means a
network's reflective boundary only ever acts at the *true* image border, never at a tile border.
The start of ``inp`` is rounded down to a multiple of ``align`` per axis, so a U-Net's pooling
grid lines up with the whole image's (which starts at 0). ``crop`` locates ``out`` inside ``inp``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Region = tuple[slice, ...]


@dataclass(frozen=True)
class Block:
    """One tile: grid ``index``, output region ``out``, input region ``inp`` and ``crop`` (``out`` within ``inp``)."""

    index: tuple[int, ...]
    out: Region
    inp: Region
    crop: Region

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the output region."""
        return tuple(s.stop - s.start for s in self.out)

    @property
    def inp_shape(self) -> tuple[int, ...]:
        """Shape of the input region."""
        return tuple(s.stop - s.start for s in self.inp)


def per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """``value`` repeated over ``ndim`` axes, or checked to have one entry per axis."""
    values = (int(value),) * ndim if isinstance(value, int | float) else tuple(int(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"{name} has {len(values)} entries for an image of {ndim} dimensions")
    return values


def make_block(
    shape: Sequence[int],
    out: Region,
    halo: int | Sequence[int] = 0,
    align: int | Sequence[int] = 1,
    index: tuple[int, ...] = (),
) -> Block:
    """The block whose output region is ``out`` (slices with explicit bounds inside ``shape``)."""
    ndim = len(shape)
    halo, align = per_axis(halo, ndim, "halo"), per_axis(align, ndim, "align")
    if min(halo, default=0) < 0 or min(align, default=1) < 1:
        raise ValueError(f"halo must be >= 0 and align >= 1, got halo={halo}, align={align}")
    inp, crop = [], []
    for o, n, h, a in zip(out, shape, halo, align):
        if not 0 <= o.start < o.stop <= n:
            raise ValueError(f"output region {out} is empty or outside an image of shape {tuple(shape)}")
        start = max(o.start - h, 0) // a * a
        inp.append(slice(start, min(o.stop + h, n)))
        crop.append(slice(o.start - start, o.stop - start))
    return Block(tuple(index), tuple(out), tuple(inp), tuple(crop))


def plan_blocks(
    shape: Sequence[int],
    block_shape: int | Sequence[int],
    halo: int | Sequence[int] = 0,
    align: int | Sequence[int] = 1,
) -> list[Block]:
    """Blocks of ``block_shape`` tiling ``shape`` exactly (the last ones along an axis may be smaller), C order."""
    shape = tuple(int(n) for n in shape)
    block_shape = per_axis(block_shape, len(shape), "block_shape")
    if min(block_shape, default=1) < 1 or min(shape, default=1) < 1:
        raise ValueError(f"block shape {block_shape} and image shape {shape} must be positive")
    grid = [range(math.ceil(n / b)) for n, b in zip(shape, block_shape)]
    blocks = []
    for index in itertools.product(*grid):
        out = tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block_shape, shape))
        blocks.append(make_block(shape, out, halo, align, index))
    return blocks


def normalize_region(region: Sequence[slice | int], shape: Sequence[int]) -> Region:
    """Slices with explicit, clipped bounds; an integer ``i`` means ``slice(i, i + 1)``; missing axes are whole."""
    region = tuple(region) + (slice(None),) * (len(shape) - len(region))
    if len(region) != len(shape):
        raise ValueError(f"region {region} has more axes than an image of shape {tuple(shape)}")
    out = []
    for r, n in zip(region, shape):
        if isinstance(r, slice):
            if r.step not in (None, 1):
                raise ValueError(f"region slices must have step 1, got {r}")
            start, stop, _ = r.indices(n)
        else:
            start = int(r) + n if int(r) < 0 else int(r)
            stop = start + 1
        out.append(slice(start, max(stop, start)))
    return tuple(out)


def _gap(a: slice, b: slice) -> int:
    """Pixels between two intervals along one axis (0 when they overlap)."""
    return max(0, b.start - a.stop + 1, a.start - b.stop + 1)


def order_blocks(blocks: Iterable[Block], first: Sequence[slice | int] | None = None) -> list[Block]:
    """Blocks intersecting the region ``first`` (e.g. the slice or viewport on screen) first, then the rest
    by distance from it; ties keep plan order. Without ``first`` the order is unchanged."""
    blocks = list(blocks)
    if first is None or not blocks:
        return blocks
    shape = [max(b.out[axis].stop for b in blocks) for axis in range(len(blocks[0].out))]
    region = normalize_region(first, shape)

    def distance(block: Block) -> float:
        return math.hypot(*(_gap(o, r) for o, r in zip(block.out, region)))

    return sorted(blocks, key=distance)  # sorted() is stable
