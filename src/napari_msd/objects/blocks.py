"""Blocks of a large array: the grid, chunk-aligned block shapes, reads, outputs, and halos from earlier blocks.

Arrays are anything with ``shape``, ``dtype`` and numpy slicing: numpy, zarr, dask (read with ``.compute()``)
or napari-msd's lazy readers. Blocks are visited in C order; :class:`LowHalo` lets a block see the last few
layers of the blocks before it without reading them again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

DEFAULT_BLOCK_PIXELS = 2**22  # 4 Mi pixels: 16 MiB of uint32 labels, plus a few temporaries of that size
MEMORY = "memory"  # ``out=MEMORY``: write the result into a new numpy array

Slices = tuple[slice, ...]
OutputFactory = Callable[[tuple[int, ...], np.dtype], Any]


def array_chunks(array: Any) -> tuple[int, ...] | None:
    """The storage chunks of a zarr, dask or lazily read array (``None`` for numpy and unchunked files)."""
    chunks = getattr(array, "chunksize", None)  # dask: one regular chunk shape
    if chunks is None:
        chunks = getattr(array, "chunks", None)
    if chunks is None or len(chunks) != len(array.shape):
        return None
    try:
        return tuple(int(c) for c in chunks)
    except TypeError:  # dask's chunks: a tuple of tuples
        return None


def choose_block_shape(
    shape: Sequence[int], chunks: Sequence[int] | None = None, target: int = DEFAULT_BLOCK_PIXELS
) -> tuple[int, ...]:
    """A block shape of about ``target`` pixels made of whole storage chunks (so every read is chunk-aligned).

    Without chunks, blocks are as near to cubes (squares) as the shape allows.
    """
    shape = tuple(int(s) for s in shape)
    unit = tuple(min(int(c), s) for c, s in zip(chunks, shape)) if chunks is not None else (1,) * len(shape)
    block = list(unit)
    while math.prod(block) < target:
        growable = [a for a in range(len(shape)) if block[a] < shape[a]]
        if not growable:
            break
        axis = min(growable, key=lambda a: block[a])  # the thinnest axis first: blocks near to cubes
        block[axis] = min(shape[axis], block[axis] * 2 if unit[axis] == 1 else block[axis] + unit[axis])
    return tuple(block)


def block_grid(shape: Sequence[int], block_shape: Sequence[int]) -> tuple[int, ...]:
    """Number of blocks along each axis."""
    return tuple(-(-int(s) // int(b)) for s, b in zip(shape, block_shape))


def block_slices(index: Sequence[int], block_shape: Sequence[int], shape: Sequence[int]) -> Slices:
    """The region of block ``index`` (the last block along an axis may be shorter)."""
    return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, block_shape, shape))


def iter_blocks(shape: Sequence[int], block_shape: Sequence[int]) -> Iterator[tuple[tuple[int, ...], Slices]]:
    """``(index, slices)`` of every block, in C order."""
    for index in np.ndindex(*block_grid(shape, block_shape)):
        yield index, block_slices(index, block_shape, shape)


def read(array: Any, slices: Slices) -> np.ndarray:
    """One region of ``array`` as a numpy array (dask arrays are computed, zarr and lazy arrays read)."""
    part = array[slices]
    if hasattr(part, "compute") and not isinstance(part, np.ndarray):
        part = part.compute()
    return np.asarray(part)


def check_block_shape(block_shape: Sequence[int] | None, array: Any) -> tuple[int, ...]:
    """``block_shape`` validated against ``array``, or one chosen from its chunks."""
    shape = tuple(int(s) for s in array.shape)
    if block_shape is None:
        return choose_block_shape(shape, array_chunks(array))
    block = tuple(int(b) for b in block_shape)
    if len(block) != len(shape) or any(b < 1 for b in block):
        raise ValueError(f"block_shape must be one positive integer per axis of {shape}, got {tuple(block_shape)}")
    return tuple(min(b, s) for b, s in zip(block, shape))


def check_same_shape(name: str, array: Any, shape: tuple[int, ...]) -> None:
    if array is not None and tuple(array.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(array.shape)}, the labels {shape}; give arrays of the same shape")


def labels_dtype_for(n: int) -> np.dtype:
    """uint32 for up to 2**32 - 1 labels, else uint64."""
    return np.dtype(np.uint32) if n < 2**32 else np.dtype(np.uint64)


def make_output(out: Any, shape: tuple[int, ...], dtype: np.dtype, largest: int) -> Any:
    """The array a result is written into: ``MEMORY`` (a new numpy array), ``None`` (nothing is written), a
    factory ``(shape, dtype) -> array``, or an existing array with room for labels up to ``largest``."""
    if out is None:
        return None
    if isinstance(out, str) and out == MEMORY:
        return np.zeros(shape, dtype)
    if callable(out) and not hasattr(out, "shape"):
        out = out(shape, dtype)
    if tuple(out.shape) != shape:
        raise ValueError(f"the output has shape {tuple(out.shape)}, the labels {shape}; give one of the same shape")
    kind = np.dtype(out.dtype)
    if kind.kind not in "iu" or np.iinfo(kind).max < largest:
        raise ValueError(f"the output's dtype {kind} cannot hold labels up to {largest}; use {dtype}")
    return out


class LowHalo:
    """Extends each block by up to ``width`` layers of the blocks before it on every axis, from memory.

    Feed every block once, in C order, to :meth:`extend`: it returns the block with the layers before it
    (fewer at the volume's low edge) and keeps, of each block, only the last ``width`` layers that later blocks
    will ask for (faces, edges and corner), dropping them after their last user. Memory: about ``width``
    planes of the volume, never a whole volume.
    """

    def __init__(self, shape: Sequence[int], block_shape: Sequence[int], width: int) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.block_shape = tuple(int(b) for b in block_shape)
        self.width = int(width)
        self.grid = block_grid(self.shape, self.block_shape)
        self._reach = tuple(-(-self.width // b) for b in self.block_shape)  # blocks back a halo can reach
        self._kept: dict[tuple[int, ...], dict[tuple[bool, ...], np.ndarray]] = {}
        self._drop_after: dict[tuple[int, ...], list[tuple[int, ...]]] = {}

    def extend(self, index: tuple[int, ...], block: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """``(extended block, layers added before it on each axis)``."""
        index = tuple(int(i) for i in index)
        own = block_slices(index, self.block_shape, self.shape)
        lo = tuple(min(self.width, s.start) for s in own)
        if not any(lo):
            ext = block
        else:
            ext = np.zeros(tuple(n + k for n, k in zip(block.shape, lo)), block.dtype)
            ext[tuple(slice(k, None) for k in lo)] = block
            wanted = tuple(slice(s.start - k, s.stop) for s, k in zip(own, lo))
            first = tuple(max(0, i - r) if k else i for i, r, k in zip(index, self._reach, lo))
            for other in np.ndindex(*(i - f + 1 for i, f in zip(index, first))):
                neighbour = tuple(f + o for f, o in zip(first, other))
                if neighbour != index:
                    self._copy(neighbour, index, wanted, ext)
        self._keep(index, block)
        for done in self._drop_after.pop(index, []):
            self._kept.pop(done, None)
        return ext, lo

    def _copy(self, neighbour: tuple[int, ...], index: tuple[int, ...], wanted: Slices, ext: np.ndarray) -> None:
        region = block_slices(neighbour, self.block_shape, self.shape)
        overlap = tuple(slice(max(w.start, r.start), min(w.stop, r.stop)) for w, r in zip(wanted, region))
        if any(o.start >= o.stop for o in overlap):
            return
        side = tuple(n < i for n, i in zip(neighbour, index))
        piece = self._kept[neighbour][side]
        origin = tuple(r.stop - p if s else r.start for r, p, s in zip(region, piece.shape, side))
        source = tuple(slice(o.start - g, o.stop - g) for o, g in zip(overlap, origin))
        target = tuple(slice(o.start - w.start, o.stop - w.start) for o, w in zip(overlap, wanted))
        ext[target] = piece[source]

    def _keep(self, index: tuple[int, ...], block: np.ndarray) -> None:
        last_user = tuple(min(i + r, g - 1) for i, r, g in zip(index, self._reach, self.grid))
        if last_user == index or self.width == 0:
            return
        pieces = {}
        for side in np.ndindex(*(2,) * block.ndim):
            if any(side):
                key = tuple(bool(s) for s in side)
                pieces[key] = block[tuple(slice(-self.width, None) if s else slice(None) for s in key)].copy()
        self._kept[index] = pieces
        self._drop_after.setdefault(last_user, []).append(index)
