"""A table of measurements per object, streamed block by block over instance labels of any size.

:func:`iter_measure` (or :class:`ObjectMeasurer`, fed blocks by another pass) reads the instance labels, and
optionally the semantic labels (each object's class: the class of most of its pixels) and an intensity image,
one block at a time. Each block is reduced with ``np.unique`` / ``np.bincount`` to a few numbers per object
in it (pixel count, coordinate sums, box, intensity sum / min / max, class counts, boundary size); the rows
of all blocks are combined at the end, so memory grows with the number of objects, not the volume, and the
table does not depend on the block shape. Columns (``z`` only in 3D):

* ``label``, ``class_id``, ``class``;
* ``volume_px`` (3D) / ``area_px`` (2D): pixels; with a :class:`~.scale.Scale` also ``volume_nm3`` / ``area_nm2``
  (the unit's symbol; ``_phys`` without a unit);
* ``surface_px`` (3D: marching-cubes area, see :mod:`.surface`) / ``perimeter_px`` (2D:
  ``skimage.measure.perimeter``); physical ``surface_nm2`` (marching cubes with the pixel size as spacing) /
  ``perimeter_nm`` (empty when the pixels are not square);
* ``centroid_z_px`` ... and physical ``centroid_z_nm`` ... (index times pixel size; pixel centres at integers);
* ``bbox_z_start`` ... ``bbox_x_stop`` in pixels, stop exclusive (as Python slices and regionprops);
* ``mean_intensity``, ``min_intensity``, ``max_intensity`` when an image is given.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .blocks import LowHalo, Slices, block_grid, check_block_shape, check_same_shape, iter_blocks, read
from .progress import Progress, run_to_end
from .scale import Scale
from .surface import PERIMETER_REACH, perimeters, surfaces
from .table import ObjectTable, TableWriteError, write_csv

AXES = ("z", "y", "x")

ClassNames = Sequence[str] | Mapping[int, str] | None


class ObjectMeasurer:
    """Accumulates the per-object measurements of blocks fed in C order (every block once), then :meth:`table`.

    ``object_classes[i]`` gives object ``i``'s class when known (e.g. :attr:`Components.classes`); otherwise
    pass the semantic labels' block to :meth:`add`. ``class_names``: a list (class ``k`` is ``names[k - 1]``)
    or a mapping. ``surfaces=False`` skips the perimeter / surface (the slowest part in 3D).
    """

    def __init__(
        self,
        shape: Sequence[int],
        block_shape: Sequence[int],
        *,
        object_classes: np.ndarray | None = None,
        class_names: ClassNames = None,
        scale: Scale | None = None,
        intensity: bool = False,
        surfaces: bool = True,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
        if self.ndim not in (2, 3):
            raise ValueError(f"instance labels must be 2D (YX) or 3D (ZYX), got shape {self.shape}")
        if scale is not None and scale.ndim != self.ndim:
            raise ValueError(f"the scale has {scale.ndim} axes, the labels {self.ndim}; give one pixel size per axis")
        self.block_shape = tuple(int(b) for b in block_shape)
        self.object_classes = None if object_classes is None else np.asarray(object_classes, np.int64)
        self.class_names = class_names
        self.scale = scale
        self.intensity = intensity
        self.surfaces = surfaces
        self._grid = block_grid(self.shape, self.block_shape)
        reach = PERIMETER_REACH * 2 if self.ndim == 2 else 1
        self._halo = LowHalo(self.shape, self.block_shape, reach) if surfaces else None
        self._parts: dict[str, list[np.ndarray]] = {}

    def _append(self, **parts: np.ndarray) -> None:
        for name, value in parts.items():
            self._parts.setdefault(name, []).append(value)

    def add(
        self,
        index: tuple[int, ...],
        slices: Slices,
        objects: np.ndarray,
        *,
        semantic: np.ndarray | None = None,
        image: np.ndarray | None = None,
    ) -> None:
        """Measure one block: ``objects`` (instance labels of the block ``slices``), its semantic labels and image."""
        objects = np.asarray(objects)
        if objects.dtype.kind not in "iu":
            raise ValueError(f"instance labels must be integers, got {objects.dtype}")
        values, inverse = np.unique(objects, return_inverse=True)
        if values.size and values[0] < 0:
            raise ValueError(f"instance labels must be 0 (background) or positive, got {values[0]}")
        inverse = inverse.reshape(objects.shape)
        flat = inverse.ravel()
        counts = np.bincount(flat, minlength=len(values))
        keep = values != 0
        sums = np.empty((len(values), self.ndim), np.float64)
        for axis, s in enumerate(slices):
            coordinate = np.arange(s.start, s.stop, dtype=np.float64).reshape((-1,) + (1,) * (self.ndim - axis - 1))
            sums[:, axis] = np.bincount(
                flat, weights=np.broadcast_to(coordinate, objects.shape).ravel(), minlength=len(values)
            )
        origin = np.array([s.start for s in slices], np.int64)
        boxes = ndimage.find_objects(inverse + 1)
        start = np.array([[b.start for b in box] for box in boxes], np.int64) + origin
        stop = np.array([[b.stop for b in box] for box in boxes], np.int64) + origin
        self._append(
            ids=values[keep].astype(np.uint64), count=counts[keep], sum=sums[keep], start=start[keep], stop=stop[keep]
        )
        if self.intensity:
            if image is None:
                raise ValueError("this measurer measures intensities: give every block's image")
            pixels = np.asarray(image, np.float64).ravel()
            order = np.argsort(flat, kind="stable")
            firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            ordered = pixels[order]
            self._append(
                intensity_sum=np.bincount(flat, weights=pixels, minlength=len(values))[keep],
                intensity_min=np.minimum.reduceat(ordered, firsts)[keep],
                intensity_max=np.maximum.reduceat(ordered, firsts)[keep],
            )
        if semantic is not None and self.object_classes is None:
            semantic = np.asarray(semantic).astype(np.int64)
            n_classes = int(semantic.max()) + 1 if semantic.size else 1
            pairs, pair_counts = np.unique(flat.astype(np.int64) * n_classes + semantic.ravel(), return_counts=True)
            owner = values[pairs // n_classes]
            real = owner != 0
            self._append(
                class_ids=owner[real].astype(np.uint64),
                class_of=(pairs % n_classes)[real],
                class_count=pair_counts[real],
            )
        if self._halo is not None:
            self._boundaries(index, objects)

    def _boundaries(self, index: tuple[int, ...], objects: np.ndarray) -> None:
        assert self._halo is not None
        ext, lo = self._halo.extend(index, objects)
        last = [i == g - 1 for i, g in zip(index, self._grid)]
        if self.ndim == 2:
            reach = PERIMETER_REACH * 2
            padded = np.pad(ext, [(reach - k, PERIMETER_REACH if end else 0) for k, end in zip(lo, last)])
            ids, lengths = perimeters(padded)
            physical = lengths * self.scale.pixel_size[-1] if self.scale is not None and self.scale.isotropic else None
            self._append(boundary_ids=ids.astype(np.uint64), boundary_px=lengths)
            if physical is not None:
                self._append(boundary_phys=physical)
        else:
            padded = np.pad(ext, [(1 - k, 1 if end else 0) for k, end in zip(lo, last)])
            spacing = self.scale.pixel_size if self.scale is not None else (1.0,) * self.ndim
            ids, areas, physical = surfaces(padded, spacing)
            self._append(boundary_ids=ids.astype(np.uint64), boundary_px=areas, boundary_phys=physical)

    def _joined(self, name: str, empty: tuple[int, ...] = (0,), dtype: Any = np.float64) -> np.ndarray:
        parts = self._parts.get(name)
        return np.concatenate(parts) if parts else np.zeros(empty, dtype)

    def table(self) -> ObjectTable:
        """The table of every object seen, sorted by label."""
        ndim = self.ndim
        ids = self._joined("ids", dtype=np.uint64)
        labels, inverse = np.unique(ids, return_inverse=True)
        n = len(labels)
        count = np.bincount(inverse, weights=self._joined("count"), minlength=n).astype(np.int64)
        sums = self._joined("sum", (0, ndim))
        totals = np.stack([np.bincount(inverse, weights=sums[:, a], minlength=n) for a in range(ndim)], axis=1)
        centroid = totals / np.maximum(count, 1)[:, None]
        start = np.full((n, ndim), np.iinfo(np.int64).max, np.int64)
        stop = np.zeros((n, ndim), np.int64)
        np.minimum.at(start, inverse, self._joined("start", (0, ndim), np.int64))
        np.maximum.at(stop, inverse, self._joined("stop", (0, ndim), np.int64))

        classes = self._classes(labels)
        names = np.array([self._class_name(int(c)) for c in classes], dtype=object)
        axes = AXES[-ndim:]
        size_name, boundary_name = ("volume", "surface") if ndim == 3 else ("area", "perimeter")
        scale = self.scale
        columns: dict[str, np.ndarray] = {"label": labels, "class_id": classes, "class": names}
        units: dict[str, str] = {}

        def put(name: str, values: np.ndarray, unit: str) -> None:
            columns[name] = values
            units[name] = unit

        put(f"{size_name}_px", count, "px")
        if scale is not None:
            put(f"{size_name}{scale.suffix(ndim)}", count * scale.pixel_volume, scale.suffix(ndim)[1:])
        if self.surfaces:
            where = np.searchsorted(labels, self._joined("boundary_ids", dtype=np.uint64))
            power = 2 if ndim == 3 else 1
            put(f"{boundary_name}_px", np.bincount(where, weights=self._joined("boundary_px"), minlength=n), "px")
            if scale is not None:
                if "boundary_phys" in self._parts or not len(where):
                    physical = np.bincount(where, weights=self._joined("boundary_phys"), minlength=n)
                else:  # a 2D perimeter in physical units needs square pixels
                    physical = np.full(n, np.nan)
                put(f"{boundary_name}{scale.suffix(power)}", physical, scale.suffix(power)[1:])
        for a, axis in enumerate(axes):
            put(f"centroid_{axis}_px", centroid[:, a], "px")
        if scale is not None:
            for a, axis in enumerate(axes):
                put(f"centroid_{axis}{scale.suffix()}", centroid[:, a] * scale.pixel_size[a], scale.suffix()[1:])
        for a, axis in enumerate(axes):
            put(f"bbox_{axis}_start", start[:, a], "px")
        for a, axis in enumerate(axes):
            put(f"bbox_{axis}_stop", stop[:, a], "px")
        if self.intensity:
            total = np.bincount(inverse, weights=self._joined("intensity_sum"), minlength=n)
            low = np.full(n, np.inf)
            high = np.full(n, -np.inf)
            np.minimum.at(low, inverse, self._joined("intensity_min"))
            np.maximum.at(high, inverse, self._joined("intensity_max"))
            columns["mean_intensity"] = total / np.maximum(count, 1)
            columns["min_intensity"] = low
            columns["max_intensity"] = high
        return ObjectTable(columns, units)

    def _classes(self, labels: np.ndarray) -> np.ndarray:
        if self.object_classes is not None:
            known = labels < len(self.object_classes)
            classes = np.zeros(len(labels), np.int64)
            classes[known] = self.object_classes[labels[known].astype(np.int64)]
            return classes
        if "class_ids" not in self._parts:
            return np.zeros(len(labels), np.int64)
        ids = self._joined("class_ids", dtype=np.uint64)
        of = self._joined("class_of", dtype=np.int64)
        counts = self._joined("class_count", dtype=np.int64)
        pairs, inverse = np.unique(np.stack([ids.astype(np.int64), of], axis=1), axis=0, return_inverse=True)
        totals = np.bincount(inverse.ravel(), weights=counts, minlength=len(pairs))
        order = np.lexsort((-totals, pairs[:, 0]))  # per object, the class with most pixels first
        ordered = pairs[order]
        first = np.concatenate([[True], ordered[1:, 0] != ordered[:-1, 0]])
        best = ordered[first]
        classes = np.zeros(len(labels), np.int64)
        classes[np.searchsorted(labels, best[:, 0].astype(np.uint64))] = best[:, 1]
        return classes

    def _class_name(self, class_id: int) -> str:
        names = self.class_names
        if class_id == 0:
            return ""
        if isinstance(names, Mapping):
            return str(names.get(class_id, f"class {class_id}"))
        if names is not None and 0 < class_id <= len(names):
            return str(names[class_id - 1])
        return f"class {class_id}"


def measure_objects(instances: Any, **kwargs: Any) -> ObjectTable:
    """:func:`iter_measure` run to the end."""
    return run_to_end(iter_measure(instances, **kwargs))


def iter_measure(
    instances: Any,
    *,
    semantic: Any = None,
    image: Any = None,
    object_classes: np.ndarray | None = None,
    class_names: ClassNames = None,
    scale: Scale | None = None,
    surfaces: bool = True,
    block_shape: Sequence[int] | None = None,
) -> Generator[Progress, None, ObjectTable]:
    """Measure every object of ``instances`` (2D or 3D integer labels, 0 = background; numpy, zarr, dask or a
    lazy reader), reading it (and ``semantic`` / ``image``, of the same shape) block by block.

    Yields :class:`~.progress.Progress` per block (stage ``"measure"``) and returns the :class:`ObjectTable`.
    """
    shape = tuple(int(s) for s in instances.shape)
    check_same_shape("the semantic labels", semantic, shape)
    check_same_shape("the image", image, shape)
    block_shape = check_block_shape(block_shape, instances)
    measurer = ObjectMeasurer(
        shape,
        block_shape,
        object_classes=object_classes,
        class_names=class_names,
        scale=scale,
        intensity=image is not None,
        surfaces=surfaces,
    )
    total = int(np.prod(block_grid(shape, block_shape)))
    for b, (index, slices) in enumerate(iter_blocks(shape, block_shape)):
        measurer.add(
            index,
            slices,
            read(instances, slices),
            semantic=read(semantic, slices) if semantic is not None and object_classes is None else None,
            image=read(image, slices) if image is not None else None,
        )
        yield Progress("measure", b + 1, total)
    return measurer.table()


__all__ = ["ObjectMeasurer", "ObjectTable", "TableWriteError", "iter_measure", "measure_objects", "write_csv"]
