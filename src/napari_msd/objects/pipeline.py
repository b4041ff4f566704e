"""From a semantic prediction to measured objects in one generator: components, optional split, measurements.

:func:`iter_objects` is what ``napari-msd measure`` runs and what a napari worker can run unchanged: it yields
:class:`~.progress.Progress` events and returns :class:`ObjectsResult` (the instance labels and the table).
Without a split, the objects are measured while their blocks are written (one pass over the output, none
read back); with a split, the components go to ``scratch``, are split into ``out`` and measured from it.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .blocks import MEMORY, check_block_shape, check_same_shape, read
from .components import Components, iter_components
from .measure import ClassNames, ObjectMeasurer, iter_measure
from .progress import Progress
from .scale import Scale
from .split import DEFAULT_H, DEFAULT_MAX_PIXELS, DEFAULT_THRESHOLD, Boxes, Split, iter_split
from .table import ObjectTable


@dataclass
class ObjectsResult:
    """``instances``: the object labels (the array written, or ``None`` with ``out=None`` and no split);
    ``table``: one row per object; ``components`` and ``split`` (``None`` without one) for the details."""

    instances: Any
    table: ObjectTable
    components: Components
    split: Split | None = None


def iter_objects(
    labels: Any,
    *,
    classes: Sequence[int] | None = None,
    class_names: ClassNames = None,
    connectivity: int = 1,
    min_size: int = 0,
    split: bool = False,
    boundary: Any = None,
    h: float = DEFAULT_H,
    threshold: float = DEFAULT_THRESHOLD,
    max_split_pixels: int = DEFAULT_MAX_PIXELS,
    image: Any = None,
    scale: Scale | None = None,
    surfaces: bool = True,
    block_shape: Sequence[int] | None = None,
    out: Any = MEMORY,
    scratch: Any = MEMORY,
) -> Generator[Progress, None, ObjectsResult]:
    """Objects of ``classes`` (default: every class) of the semantic ``labels``, optionally split, measured.

    ``out`` receives the final instance labels and ``scratch`` the unsplit components when splitting (each
    ``MEMORY``, an array or a factory ``(shape, dtype) -> array``, as in
    :func:`~napari_msd.objects.components.iter_components`; ``out=None`` keeps no labels when not splitting).
    The split's distance transform uses the pixel size relative to the finest axis when ``scale`` is given
    (``h`` stays in pixels of that axis). See the modules :mod:`.components`, :mod:`.split`, :mod:`.measure`.
    """
    shape = tuple(int(s) for s in labels.shape)
    check_same_shape("the image", image, shape)
    check_same_shape("the boundary map", boundary, shape)
    block_shape = check_block_shape(block_shape, labels)
    if split and scratch is None:
        raise ValueError("a split needs somewhere to keep the components: give scratch (MEMORY, an array or a factory)")
    if not split:
        measurer = ObjectMeasurer(
            shape, block_shape, class_names=class_names, scale=scale, intensity=image is not None, surfaces=surfaces
        )

        def on_block(index: tuple[int, ...], slices: tuple[slice, ...], objects: np.ndarray) -> None:
            measurer.add(index, slices, objects, image=read(image, slices) if image is not None else None)

        found = yield from iter_components(
            labels,
            classes=classes,
            connectivity=connectivity,
            min_size=min_size,
            block_shape=block_shape,
            out=out,
            on_block=on_block,
        )
        measurer.object_classes = found.classes
        return ObjectsResult(found.labels, measurer.table(), found)

    found = yield from iter_components(
        labels, classes=classes, connectivity=connectivity, min_size=min_size, block_shape=block_shape, out=scratch
    )
    sampling = None
    if scale is not None:
        finest = min(scale.pixel_size)
        sampling = tuple(s / finest for s in scale.pixel_size)
    pieces = yield from iter_split(
        found.labels,
        boxes=Boxes.from_array(found.boxes),
        boundary=boundary,
        h=h,
        threshold=threshold,
        sampling=sampling,
        max_pixels=max_split_pixels,
        block_shape=block_shape,
        out=out if out is not None else MEMORY,
    )
    table = yield from iter_measure(
        pieces.labels,
        image=image,
        object_classes=found.classes[pieces.parent],
        class_names=class_names,
        scale=scale,
        surfaces=surfaces,
        block_shape=block_shape,
    )
    return ObjectsResult(pieces.labels, table, found, pieces)
