"""Connected components of a semantic labels array, block by block, for volumes larger than memory.

:func:`iter_components` labels the objects of one, several or every class of a labels array (numpy, zarr,
dask or a lazy reader; 2D or 3D) in two passes over blocks of whole storage chunks:

1. each block is labelled on its own (``skimage.measure.label``: pixels of the same class that touch form
   one component, so every object keeps its class); the block's labels are compared with the last layer of
   the blocks before it (kept in memory by :class:`~.blocks.LowHalo`, never read again) and every pair of
   provisional labels of the same class that touch across a block face, edge or corner is recorded;
2. the pairs are merged (union-find, solved at once as the connected components of the pair graph), objects
   below ``min_size`` pixels (counted over the whole volume) are dropped, and the survivors numbered 1..n in
   the order of their first pixel block by block; each block is labelled again (the same, deterministic
   result) and written through that lookup table.

The result equals a whole-volume ``scipy.ndimage.label`` of each class up to a renumbering, for any block
shape. Memory: one block and its temporaries, one plane of provisional labels, and a few numbers per
provisional object; never the volume.

Connectivity: ``1`` (the default) joins pixels that share a face, as ``scipy.ndimage.label`` does by default
and as napari's fill tool does; ``ndim`` (2 in 2D, 3 in 3D) also joins pixels that touch only at an edge or a
corner, which merges objects that merely touch diagonally.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from .blocks import (
    MEMORY,
    LowHalo,
    Slices,
    block_grid,
    check_block_shape,
    iter_blocks,
    labels_dtype_for,
    make_output,
    read,
)
from .progress import Progress, run_to_end

BlockCallback = Callable[[tuple[int, ...], Slices, np.ndarray], None]


@dataclass
class Components:
    """Objects 1..n of a labels array: ``labels`` (the written array, or ``None`` with ``out=None``),
    ``classes[i]``, ``sizes[i]`` (pixels) and ``boxes[i]`` (``(2, ndim)``: start and stop per axis) of object
    ``i``; entry 0 stands for the background. ``dropped`` objects were smaller than ``min_size``."""

    labels: Any
    classes: np.ndarray
    sizes: np.ndarray
    boxes: np.ndarray
    connectivity: int
    dropped: int = 0

    @property
    def n_objects(self) -> int:
        return len(self.classes) - 1


class _Grow:
    """A numpy array that grows at its end (amortised doubling)."""

    def __init__(self, dtype: Any, width: int | None = None) -> None:
        self._data = np.zeros((1024,) if width is None else (1024, width), dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self._data):
            bigger = np.zeros((max(need, 2 * len(self._data)), *self._data.shape[1:]), self._data.dtype)
            bigger[: self.size] = self._data[: self.size]
            self._data = bigger
        self._data[self.size : need] = values
        self.size = need

    @property
    def values(self) -> np.ndarray:
        return self._data[: self.size]


def label_components(labels: Any, **kwargs: Any) -> Components:
    """:func:`iter_components` run to the end."""
    return run_to_end(iter_components(labels, **kwargs))


def iter_components(
    labels: Any,
    *,
    classes: Sequence[int] | None = None,
    connectivity: int = 1,
    min_size: int = 0,
    block_shape: Sequence[int] | None = None,
    out: Any = MEMORY,
    on_block: BlockCallback | None = None,
) -> Generator[Progress, None, Components]:
    """Connected components of the given ``classes`` (default: every non-zero value) of ``labels``.

    Yields :class:`~.progress.Progress` per block (stages ``"label"`` then ``"write"``) and returns
    :class:`Components`. ``block_shape`` defaults to whole storage chunks of about 4 Mi pixels. ``out``:
    ``MEMORY`` (a new numpy array), an array to write into (zarr or numpy, written block by block), a factory
    ``(shape, dtype) -> array`` called once the number of objects is known (uint32, or uint64 beyond 2**32 - 1
    objects), or ``None`` to write nothing. ``on_block(index, slices, objects)`` sees every finished block of
    object labels, in C order (to measure them on the fly).
    """
    shape = tuple(int(s) for s in labels.shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"labels must be 2D (YX) or 3D (ZYX), got shape {shape}")
    if np.dtype(labels.dtype).kind not in "biu":
        raise ValueError(f"labels must be integers (0 = background, 1..K = classes), got {labels.dtype}")
    if not 1 <= int(connectivity) <= ndim:
        raise ValueError(f"connectivity must be 1 (faces) to {ndim} (faces, edges and corners), got {connectivity}")
    connectivity = int(connectivity)
    wanted = None if classes is None else np.unique(np.asarray(list(classes), dtype=np.int64))
    if wanted is not None and (wanted.size == 0 or wanted.min() < 1):
        raise ValueError(f"classes must be labels 1..K, got {list(classes or [])}")
    block_shape = check_block_shape(block_shape, labels)
    n_blocks = int(np.prod(block_grid(shape, block_shape)))
    offsets = np.zeros(n_blocks + 1, np.int64)  # provisional ids of block b: offsets[b] + 1 .. offsets[b + 1]
    prov_class = _Grow(np.int64)
    prov_size = _Grow(np.int64)
    prov_start = _Grow(np.int64, ndim)
    prov_stop = _Grow(np.int64, ndim)
    pairs: list[np.ndarray] = []
    halo = LowHalo(shape, block_shape, 1)
    steps = _half_structure(ndim, connectivity)

    for b, (index, slices) in enumerate(iter_blocks(shape, block_shape)):
        block = _selected(read(labels, slices), wanted)
        local, n = _label(block, connectivity)
        offset = int(offsets[b])
        offsets[b + 1] = offset + n
        flat = local.ravel()
        cls = np.zeros(n + 1, np.int64)
        cls[flat] = block.ravel()
        prov_class.extend(cls[1:])
        prov_size.extend(np.bincount(flat, minlength=n + 1)[1:])
        found = ndimage.find_objects(local)
        origin = np.array([s.start for s in slices], np.int64)
        prov_start.extend(np.array([[s.start for s in f] for f in found], np.int64).reshape(n, ndim) + origin)
        prov_stop.extend(np.array([[s.stop for s in f] for f in found], np.int64).reshape(n, ndim) + origin)
        provisional = np.where(local > 0, local.astype(np.int64) + offset, 0)
        ext, lo = halo.extend(index, provisional)
        touching = _touching_pairs(ext, lo, steps, prov_class.values)
        if touching.size:
            pairs.append(touching)
        yield Progress("label", b + 1, n_blocks)

    n_prov = int(offsets[-1])
    lookup, result = _merge(
        n_prov, pairs, prov_class.values, prov_size.values, prov_start.values, prov_stop.values, min_size
    )
    n = result.n_objects
    dtype = labels_dtype_for(n)
    target = make_output(out, shape, dtype, n)
    for b, (index, slices) in enumerate(iter_blocks(shape, block_shape)):
        block = _selected(read(labels, slices), wanted)
        local, count = _label(block, connectivity)
        if count != offsets[b + 1] - offsets[b]:  # the input changed between the two passes
            raise RuntimeError(f"block {index} of the labels changed while its objects were being computed")
        table = np.concatenate([[0], lookup[offsets[b] + 1 : offsets[b + 1] + 1]]).astype(dtype)
        objects = table[local]
        if target is not None:
            target[slices] = objects
        if on_block is not None:
            on_block(index, slices, objects)
        yield Progress("write", b + 1, n_blocks)
    result.labels = target
    result.connectivity = connectivity
    return result


def _selected(block: np.ndarray, wanted: np.ndarray | None) -> np.ndarray:
    """The block with every class outside ``wanted`` set to 0."""
    if block.dtype.kind == "b":
        block = block.astype(np.uint8)
    if wanted is None:
        return block
    return np.where(np.isin(block, wanted), block, 0)


def _label(block: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Components of equal non-zero values (skimage's labelling of multi-valued images), labelled 1..n."""
    from skimage.measure import label

    local, n = label(block, background=0, connectivity=connectivity, return_num=True)
    return local, int(n)


def _half_structure(ndim: int, connectivity: int) -> list[tuple[int, ...]]:
    """The neighbour offsets of the connectivity, one of each ``d`` / ``-d`` pair."""
    structure = ndimage.generate_binary_structure(ndim, connectivity)
    offsets = [tuple(int(v) - 1 for v in idx) for idx in zip(*np.nonzero(structure))]
    return [d for d in offsets if any(d) and next(v for v in d if v) > 0]


def _touching_pairs(
    ext: np.ndarray, lo: tuple[int, ...], steps: list[tuple[int, ...]], classes: np.ndarray
) -> np.ndarray:
    """Pairs ``(a, b)`` of different provisional labels of one class that touch, one of them in the halo.

    Only the two layers at each low face are looked at: a pair with one pixel in the halo lies within them.
    """
    found = []
    for axis, k in enumerate(lo):
        if not k:
            continue
        slab = ext[(slice(None),) * axis + (slice(0, 2),)]
        for d in steps:
            first = slab[tuple(slice(max(0, -v), n - max(0, v)) for v, n in zip(d, slab.shape))]
            second = slab[tuple(slice(max(0, v), n - max(0, -v)) for v, n in zip(d, slab.shape))]
            keep = (first != second) & (first > 0) & (second > 0)
            if keep.any():
                a, c = first[keep], second[keep]
                same = classes[a - 1] == classes[c - 1]
                found.append(np.stack([a[same], c[same]], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def _merge(
    n_prov: int,
    pairs: list[np.ndarray],
    classes: np.ndarray,
    sizes: np.ndarray,
    starts: np.ndarray,
    stops: np.ndarray,
    min_size: int,
) -> tuple[np.ndarray, Components]:
    """Merge touching provisional labels; ``(lookup provisional id -> object 0..n, Components without labels)``."""
    ndim = starts.shape[1]
    if n_prov == 0:
        empty = Components(None, np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros((1, 2, ndim), np.int64), 0)
        return np.zeros(1, np.int64), empty
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    graph = sparse.coo_matrix(
        (np.ones(len(edges), np.int8), (edges[:, 0] - 1, edges[:, 1] - 1)), shape=(n_prov, n_prov)
    )
    n_comp, comp = csgraph.connected_components(graph, directed=False)
    size = np.bincount(comp, weights=sizes, minlength=n_comp).astype(np.int64)
    first = np.full(n_comp, n_prov, np.int64)
    np.minimum.at(first, comp, np.arange(n_prov))
    kept = np.flatnonzero(size >= max(int(min_size), 1))
    kept = kept[np.argsort(first[kept], kind="stable")]  # numbered in the order of their first pixel
    number = np.zeros(n_comp, np.int64)
    number[kept] = np.arange(1, len(kept) + 1)
    lookup = np.concatenate([[0], number[comp]])
    start = np.full((n_comp, ndim), np.iinfo(np.int64).max, np.int64)
    stop = np.zeros((n_comp, ndim), np.int64)
    np.minimum.at(start, comp, starts)
    np.maximum.at(stop, comp, stops)
    comp_class = np.zeros(n_comp, np.int64)
    comp_class[comp] = classes
    boxes = np.zeros((len(kept) + 1, 2, ndim), np.int64)
    boxes[1:, 0], boxes[1:, 1] = start[kept], stop[kept]
    result = Components(
        labels=None,
        classes=np.concatenate([[0], comp_class[kept]]),
        sizes=np.concatenate([[0], size[kept]]),
        boxes=boxes,
        connectivity=0,
        dropped=n_comp - len(kept),
    )
    return lookup, result
