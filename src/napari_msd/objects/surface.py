"""Boundary size of every object of a block, additive over blocks: 2D perimeter and 3D surface area.

Both are sums of local terms, so a volume's objects are measured block by block, exactly:

* 2D: ``skimage.measure.perimeter`` (4-connected border pixels, each weighted by its 3x3 neighbourhood of
  border pixels); a pixel's weight depends on the pixels within 2 of it.
* 3D: the area of the marching-cubes mesh (``skimage.measure.marching_cubes`` at level 0.5 of the object's
  mask, zero outside the volume, and ``mesh_surface_area``); each cube of 2x2x2 voxels contributes its own
  triangles, whose area depends only on which corners are inside, so a table of the 256 patterns gives it.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np

PERIMETER_REACH = 2  # a pixel's perimeter weight depends on the labels within 2 pixels of it
_WEIGHTS = np.zeros(50, np.float64)  # skimage.measure.perimeter's weights of the border-pixel codes
_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_WEIGHTS[[21, 33]] = np.sqrt(2)
_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
_KERNEL = {(-1, -1): 10, (-1, 0): 2, (-1, 1): 10, (0, -1): 2, (0, 1): 2, (1, -1): 10, (1, 0): 2, (1, 1): 10}


def perimeters(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, perimeter in pixels)`` of the labels of a 2D array, counting only the pixels at least
    :data:`PERIMETER_REACH` from its edge (the caller pads or overlaps by that much).

    Per object this is ``skimage.measure.perimeter(labels == id, neighborhood=4)``, for all objects at once.
    """
    lab = labels
    centre = lab[1:-1, 1:-1]
    border = np.zeros(lab.shape, bool)
    border[1:-1, 1:-1] = (centre > 0) & (
        (lab[:-2, 1:-1] != centre) | (lab[2:, 1:-1] != centre) | (lab[1:-1, :-2] != centre) | (lab[1:-1, 2:] != centre)
    )
    n0, n1 = lab.shape
    inner = lab[2:-2, 2:-2]
    on_border = border[2:-2, 2:-2]
    code = on_border.astype(np.int64)
    for (dy, dx), weight in _KERNEL.items():
        rows, cols = slice(2 + dy, n0 - 2 + dy), slice(2 + dx, n1 - 2 + dx)
        code += weight * (border[rows, cols] & (lab[rows, cols] == inner))
    ids = inner[on_border]
    if not ids.size:
        return np.zeros(0, lab.dtype), np.zeros(0, np.float64)
    values, index = np.unique(ids, return_inverse=True)
    return values, np.bincount(index, weights=_WEIGHTS[code[on_border]], minlength=len(values))


def surfaces(labels: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, area in pixel units, area in physical units)`` of the marching-cubes mesh of every label of a 3D
    array, over the cubes between its voxels (the caller pads with zeros where the volume ends).

    Per object this is ``mesh_surface_area(*marching_cubes(labels == id, 0.5)[:2])`` of the padded mask, for all
    objects at once: a cube's triangles depend only on which of its 8 corners are inside the object, so each
    cube adds the area of its corner pattern (:func:`cube_areas`) to every object among its corners.
    """
    shape = labels.shape
    corners = [
        labels[dz : shape[0] - 1 + dz, dy : shape[1] - 1 + dy, dx : shape[2] - 1 + dx].ravel()
        for dz, dy, dx in itertools.product((0, 1), repeat=3)
    ]
    mixed = np.zeros(corners[0].shape, bool)
    for corner in corners[1:]:
        mixed |= corner != corners[0]
    where = np.flatnonzero(mixed)  # only cubes with more than one label carry surface
    corners = [corner[where] for corner in corners]
    by_pixel, by_unit = cube_areas((1.0, 1.0, 1.0)), cube_areas(tuple(float(s) for s in spacing))
    ids, patterns = [], []
    for c, owner in enumerate(corners):
        first = owner != 0  # each object of a cube once: at the first corner that holds it
        for earlier in corners[:c]:
            first &= earlier != owner
        pattern = np.zeros(owner.shape, np.uint8)
        for k, corner in enumerate(corners):
            pattern |= (corner == owner).astype(np.uint8) << k
        ids.append(owner[first])
        patterns.append(pattern[first])
    found = np.concatenate(ids) if ids else np.zeros(0, labels.dtype)
    pattern = np.concatenate(patterns) if patterns else np.zeros(0, np.uint8)
    values, index = np.unique(found, return_inverse=True)
    pixel = np.bincount(index, weights=by_pixel[pattern], minlength=len(values))
    physical = np.bincount(index, weights=by_unit[pattern], minlength=len(values))
    return values.astype(labels.dtype), pixel, physical


@functools.lru_cache(maxsize=16)
def cube_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area of the marching-cubes triangles of one cube, for each of the 256 patterns of inside corners (bit
    ``k`` is corner ``np.unravel_index(k, (2, 2, 2))``), with voxels of size ``spacing``."""
    from skimage.measure import marching_cubes, mesh_surface_area

    areas = np.zeros(256, np.float64)
    bits = np.arange(8)
    for pattern in range(1, 255):
        cube = ((pattern >> bits) & 1).reshape(2, 2, 2).astype(np.float32)
        verts, faces, _, _ = marching_cubes(cube, level=0.5)
        areas[pattern] = mesh_surface_area(verts.astype(np.float64) * np.asarray(spacing), faces)
    return areas
