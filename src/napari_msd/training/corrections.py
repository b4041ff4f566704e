"""Turn a user's edits of a predicted label image, and labels painted since a training, into training labels.

Both work slab by slab along the first axis, so numpy, zarr and dask arrays of any size are compared without
holding more than a slab of each in memory.

* :func:`corrections`: pixels where the edited prediction differs from the prediction as it was predicted
  and is not 0. Erased pixels (set to 0) are not corrections: erasing says what a pixel is not, never what
  it is, so the user paints the right class instead.
* :func:`split_since`: the labels painted now, split into those that changed since a snapshot taken at
  training time (the new labels a fine-tuning focuses on) and those unchanged (replayed, so earlier
  annotations are not forgotten). A stroke the user erased since is in neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

SLAB_PIXELS = 2**24  # pixels of one slab compared at a time


def slabs(shape: tuple[int, ...], pixels: int = SLAB_PIXELS) -> Iterator[slice]:
    """Slices along the first axis covering ``shape`` with about ``pixels`` pixels each (at least one row)."""
    if not shape:
        raise ValueError("label images must have at least one dimension")
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, pixels // max(1, row))
    for start in range(0, shape[0], step):
        yield slice(start, min(shape[0], start + step))


def _same_shape(a: Any, b: Any, what: str) -> tuple[int, ...]:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ; compare layers of the same image"
        )
    return tuple(int(n) for n in a.shape)


def corrections(edited: Any, predicted: Any, pixels: int = SLAB_PIXELS) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """``(indices, values)`` of the pixels the user changed to a class (``edited != predicted`` and
    ``edited != 0``), as fancy-index arrays into the image (``napari`` ``Labels.data_setitem`` takes them)."""
    shape = _same_shape(edited, predicted, "edited and predicted labels")
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for rows in slabs(shape, pixels):
        new, old = np.asarray(edited[rows]), np.asarray(predicted[rows])
        where = np.nonzero((new != old) & (new != 0))
        if where[0].size:
            coords = np.stack(where, axis=1)
            coords[:, 0] += rows.start
            found.append((coords, new[where]))
    if not found:
        return tuple(np.zeros(0, np.intp) for _ in shape), np.zeros(0, np.asarray(edited[:0]).dtype)
    coords = np.concatenate([c for c, _ in found])
    values = np.concatenate([v for _, v in found])
    return tuple(coords[:, i].astype(np.intp) for i in range(len(shape))), values


def split_since(labels: Any, snapshot: Any, new_out: Any, kept_out: Any, pixels: int = SLAB_PIXELS) -> tuple[int, int]:
    """Write the labels changed since ``snapshot`` into ``new_out`` and the unchanged ones into ``kept_out``
    (both zero elsewhere; numpy or zarr arrays of the labels' shape). Returns their labeled pixel counts."""
    shape = _same_shape(labels, snapshot, "labels and their snapshot")
    for out in (new_out, kept_out):
        _same_shape(labels, out, "labels and output")
        if np.dtype(out.dtype).itemsize < np.dtype(labels.dtype).itemsize:
            raise ValueError(f"outputs of dtype {out.dtype} cannot hold labels of dtype {labels.dtype}")
    n_new = n_kept = 0
    for rows in slabs(shape, pixels):
        now, then = np.asarray(labels[rows]), np.asarray(snapshot[rows])
        changed = now != then
        new = np.where(changed, now, 0)
        kept = np.where(changed, 0, now)
        new_out[rows], kept_out[rows] = new, kept
        n_new += int(np.count_nonzero(new))
        n_kept += int(np.count_nonzero(kept))
    return n_new, n_kept


def copy_slabs(source: Any, out: Any, pixels: int = SLAB_PIXELS) -> Any:
    """Copy ``source`` into ``out`` (same shape) slab by slab; returns ``out``."""
    shape = _same_shape(source, out, "source and copy")
    for rows in slabs(shape, pixels):
        out[rows] = np.asarray(source[rows])
    return out
