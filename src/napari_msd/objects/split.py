"""Watershed split of touching objects, one object at a time on its bounding box, for volumes of any size.

:func:`split_object` splits one object's mask. Seeds come from the distance transform (distance of each
pixel to the nearest pixel outside the object; outside the array counts as outside): its **h-maxima**, the
maxima that rise more than ``h`` above every path to a higher maximum, so two touching balls whose neck is
narrower than their radii by more than ``h`` get a seed each, while a convex blob (whose ridge varies by less
than a pixel) keeps one; the basins of ``-distance`` are flooded from them. With a **boundary map** (the
probability of a boundary class such as membrane, 0..1) the seeds are instead the connected parts of the
object where the boundary probability is below ``threshold`` and the map itself is flooded, so objects
split along predicted boundaries. An object with fewer than two seeds stays whole.

:func:`iter_split` applies it to every object of an instance labels array. Each object is split from its
own crop (its bounding box; the mask padded by one pixel of outside), so the result does not depend on the
blocks and equals the same per-object computation on whole-volume arrays; it differs from one watershed of
the whole volume only where that would let objects flood into each other. Objects inside one block are
split while that block is read and written; an object crossing block borders is read and written back on
its own box; an object whose box holds more than ``max_pixels`` pixels (e.g. a membrane network spanning
the volume) is kept whole, so memory stays bounded by a block or ``max_pixels``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .blocks import (
    MEMORY,
    block_grid,
    check_block_shape,
    check_same_shape,
    iter_blocks,
    labels_dtype_for,
    make_output,
    read,
)
from .progress import Progress, run_to_end

DEFAULT_H = 2.0  # pixels of distance
DEFAULT_THRESHOLD = 0.5  # boundary probability below which a pixel can seed
DEFAULT_MAX_PIXELS = 2**24  # objects whose bounding box is larger are kept whole


@dataclass
class Boxes:
    """Bounding boxes of objects: ``ids`` (m,, ascending), ``start`` and ``stop`` (m, ndim), ``stop`` exclusive."""

    ids: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    @classmethod
    def from_array(cls, boxes: np.ndarray) -> Boxes:
        """From :attr:`Components.boxes <napari_msd.objects.components.Components.boxes>` (row i = object i)."""
        return cls(np.arange(1, len(boxes), dtype=np.int64), boxes[1:, 0], boxes[1:, 1])


@dataclass
class Split:
    """The split objects 1..n: ``labels`` (the written array), ``parent[i]`` the object that object ``i``
    came from (``parent[0] = 0``), ``too_large`` objects kept whole for their size."""

    labels: Any
    parent: np.ndarray
    too_large: int = 0

    @property
    def n_objects(self) -> int:
        return len(self.parent) - 1


def split_object(
    mask: np.ndarray,
    *,
    boundary: np.ndarray | None = None,
    h: float = DEFAULT_H,
    threshold: float = DEFAULT_THRESHOLD,
    sampling: Sequence[float] | None = None,
) -> tuple[np.ndarray, int]:
    """``(pieces, n)``: the object ``mask`` cut into pieces 1..n (0 outside it); see the module docstring.

    ``sampling`` is the pixel size per axis for the distance transform (``h`` is in the same unit);
    ``boundary`` a probability map of the mask's shape.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32), 0
    full = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    if boundary is None:
        from skimage.morphology import h_maxima

        inner = (slice(1, -1),) * mask.ndim
        distance = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=sampling)
        peaks = h_maxima(distance, float(h))[inner].astype(bool) & mask
        markers, n = ndimage.label(peaks, structure=full)
        elevation = -distance[inner]
    else:
        probability = as_probability(np.asarray(boundary))
        if probability.shape != mask.shape:
            raise ValueError(f"the boundary map has shape {probability.shape}, the object {mask.shape}")
        markers, n = ndimage.label(mask & (probability < threshold), structure=full)
        elevation = probability
    if n < 2:
        return mask.astype(np.int32), 1
    from skimage.segmentation import watershed

    pieces = watershed(elevation, markers, mask=mask, connectivity=mask.ndim)
    return pieces.astype(np.int32), int(n)


def as_probability(values: np.ndarray) -> np.ndarray:
    """Probabilities as floats: integer maps are read as value / the dtype's maximum (uint8: / 255)."""
    if values.dtype.kind in "iu":
        return values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)
    if values.dtype.kind == "b":
        return values.astype(np.float32)
    return values


def split_objects(instances: Any, **kwargs: Any) -> Split:
    """:func:`iter_split` run to the end."""
    return run_to_end(iter_split(instances, **kwargs))


def iter_boxes(instances: Any, *, block_shape: Sequence[int] | None = None) -> Generator[Progress, None, Boxes]:
    """Bounding boxes of every object of an instance labels array, block by block (stage ``"boxes"``)."""
    block_shape = check_block_shape(block_shape, instances)
    shape = tuple(int(s) for s in instances.shape)
    total = int(np.prod(block_grid(shape, block_shape)))
    ids, starts, stops = [], [], []
    for b, (_, slices) in enumerate(iter_blocks(shape, block_shape)):
        block = read(instances, slices)
        values, local = np.unique(block, return_inverse=True)
        found = ndimage.find_objects(local.reshape(block.shape) + 1)
        origin = np.array([s.start for s in slices], np.int64)
        for value, box in zip(values, found):
            if value != 0 and box is not None:
                ids.append(int(value))
                starts.append([s.start for s in box] + origin)
                stops.append([s.stop for s in box] + origin)
        yield Progress("boxes", b + 1, total)
    ndim = len(shape)
    if not ids:
        return Boxes(np.zeros(0, np.int64), np.zeros((0, ndim), np.int64), np.zeros((0, ndim), np.int64))
    unique, inverse = np.unique(np.array(ids, np.int64), return_inverse=True)
    start = np.full((len(unique), ndim), np.iinfo(np.int64).max, np.int64)
    stop = np.zeros((len(unique), ndim), np.int64)
    np.minimum.at(start, inverse, np.array(starts, np.int64))
    np.maximum.at(stop, inverse, np.array(stops, np.int64))
    return Boxes(unique, start, stop)


def iter_split(
    instances: Any,
    *,
    boxes: Boxes | None = None,
    boundary: Any = None,
    h: float = DEFAULT_H,
    threshold: float = DEFAULT_THRESHOLD,
    sampling: Sequence[float] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    block_shape: Sequence[int] | None = None,
    out: Any = MEMORY,
) -> Generator[Progress, None, Split]:
    """Split every object of ``instances`` (labels 1..n, any integers) with :func:`split_object`.

    ``boxes`` are the objects' bounding boxes (found with :func:`iter_boxes` when not given); ``boundary``
    an array of the same shape (probabilities, see :func:`as_probability`). ``out`` as in
    :func:`~napari_msd.objects.components.iter_components` (uint32 labels unless the volume needs uint64).
    New labels are consecutive: objects kept whole for their size first, then objects in block order.
    Yields :class:`~.progress.Progress` (stage ``"split"``: blocks, then objects crossing block borders).
    """
    shape = tuple(int(s) for s in instances.shape)
    block_shape = check_block_shape(block_shape, instances)
    check_same_shape("the boundary map", boundary, shape)
    if boxes is None:
        boxes = yield from iter_boxes(instances, block_shape=block_shape)
    block = np.array(block_shape, np.int64)
    size = np.prod(boxes.stop - boxes.start, axis=1) if len(boxes.ids) else np.zeros(0, np.int64)
    large = size > max_pixels
    first_block = boxes.start // block
    inside = ~large & np.all(first_block == (boxes.stop - 1) // block, axis=1)
    crossing = np.flatnonzero(~large & ~inside)
    grid = block_grid(shape, block_shape)
    owner = np.ravel_multi_index(tuple(first_block[inside].T), grid) if inside.any() else np.zeros(0, np.int64)
    by_block: dict[int, list[int]] = {}
    for where, b in zip(np.flatnonzero(inside), owner):
        by_block.setdefault(int(b), []).append(int(where))

    n_pixels = int(np.prod(shape, dtype=np.int64))
    dtype = labels_dtype_for(n_pixels)  # never more pieces than pixels
    target = make_output(out, shape, dtype, min(n_pixels, int(np.iinfo(dtype).max)))
    if target is None:
        raise ValueError("a split needs an output to write into")
    large_ids = boxes.ids[large]
    parent: list[int] = [0, *(int(i) for i in large_ids)]
    total = int(np.prod(grid)) + len(crossing)
    for b, (_, slices) in enumerate(iter_blocks(shape, block_shape)):
        labels = read(instances, slices)
        result = np.zeros(labels.shape, dtype)
        if len(large_ids):
            hit = np.isin(labels, large_ids)
            result[hit] = np.searchsorted(large_ids, labels[hit]) + 1
        rows = by_block.get(b, [])
        if rows:
            probability = read(boundary, slices) if boundary is not None else None
            origin = np.array([s.start for s in slices], np.int64)
            for row in rows:
                local = tuple(
                    slice(int(a), int(z)) for a, z in zip(boxes.start[row] - origin, boxes.stop[row] - origin)
                )
                mask = labels[local] == boxes.ids[row]
                crop = probability[local] if probability is not None else None
                pieces, n = split_object(mask, boundary=crop, h=h, threshold=threshold, sampling=sampling)
                view = result[local]
                view[mask] = pieces[mask] + (len(parent) - 1)
                parent.extend([int(boxes.ids[row])] * n)
        target[slices] = result
        yield Progress("split", b + 1, total)
    for k, row in enumerate(crossing.tolist()):
        box = tuple(slice(int(a), int(z)) for a, z in zip(boxes.start[row], boxes.stop[row]))
        mask = read(instances, box) == boxes.ids[row]
        crop = read(boundary, box) if boundary is not None else None
        pieces, n = split_object(mask, boundary=crop, h=h, threshold=threshold, sampling=sampling)
        region = read(target, box)
        region[mask] = pieces[mask] + (len(parent) - 1)
        target[box] = region
        parent.extend([int(boxes.ids[row])] * n)
        yield Progress("split", int(np.prod(grid)) + k + 1, total)
    return Split(labels=target, parent=np.array(parent, np.int64), too_large=int(large.sum()))


__all__ = [
    "Boxes",
    "Split",
    "as_probability",
    "iter_boxes",
    "iter_split",
    "split_objects",
    "split_object",
]
