"""The resolution pyramid of OME-Zarr prediction outputs: level geometry and 2x downsampling (no napari, no Qt).

Each level halves the spatial axes of the one below until a level fits in one block; labels are strided
(nearest), probabilities averaged over 2x(2x)2 cells, computed with dask one output chunk per task.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .job import JobSpec
from .ome import write_pyramid_metadata


def build_pyramid(
    root: Any, job: JobSpec, labels_group: str, probabilities_group: str, *, downsample_z: bool, max_levels: int
) -> int:
    """Compute levels ``s1``, ``s2``, ... of the job's pyramids from ``s0`` and write their metadata.

    Returns the number of levels, ``s0`` included.

    ``labels_group`` / ``probabilities_group`` are the group prefixes of the two pyramids in ``root`` (``""`` = the
    root, else ending in ``/``). Levels left over from an earlier, taller pyramid are deleted.
    """
    import dask.array as da

    steps = _level_steps(job.input_shape, job.block_shape, downsample_z, max_levels)
    shapes, factors = [job.input_shape], [(1,) * job.ndim]
    for step in steps:
        shapes.append(tuple(-(-s // f) for s, f in zip(shapes[-1], step)))
        factors.append(tuple(a * f for a, f in zip(factors[-1], step)))
    targets = []
    if job.probabilities != "none":
        targets.append((probabilities_group, True, "mean"))
    if job.labels:
        targets.append((labels_group, False, "stride"))
    for group_path, channels, method in targets:
        group = root[group_path.rstrip("/")] if group_path else root
        lead = (job.n_classes,) if channels else ()
        for level, step in enumerate(steps, start=1):
            source = group[f"s{level - 1}"]
            chunks = (1,) * len(lead) + tuple(min(b, s) for b, s in zip(job.block_shape, shapes[level]))
            target = group.create_array(
                f"s{level}",
                shape=lead + shapes[level],
                chunks=chunks,
                dtype=source.dtype,
                fill_value=0,
                dimension_names=source.metadata.dimension_names,
                overwrite=True,
            )
            full_step = (1,) * len(lead) + step
            src = da.from_zarr(source, chunks=tuple(c * f for c, f in zip(chunks, full_step)))
            out_chunks = tuple(tuple(-(-c // f) for c in axis) for axis, f in zip(src.chunks, full_step))
            fn = functools.partial(_mean_downsample if method == "mean" else _stride_downsample, factors=full_step)
            out = src.map_blocks(
                fn, chunks=out_chunks, dtype=source.dtype, meta=np.empty((0,) * src.ndim, source.dtype)
            )
            da.store(out, target, lock=False)
        stale = len(steps) + 1
        while f"s{stale}" in group:
            del group[f"s{stale}"]
            stale += 1
        write_pyramid_metadata(group, job, factors, channels, method)
    return len(shapes)


def _level_steps(
    shape: tuple[int, ...], block: tuple[int, ...], downsample_z: bool, max_levels: int
) -> list[tuple[int, ...]]:
    """Per-axis factors (1 or 2) from each pyramid level to the next."""
    steps: list[tuple[int, ...]] = []
    current = shape
    free = [not (len(shape) == 3 and a == 0 and not downsample_z) for a in range(len(shape))]
    while len(steps) + 1 < max_levels and any(c > b for c, b, f in zip(current, block, free) if f):
        step = tuple(2 if f and c > 1 else 1 for c, f in zip(current, free))
        current = tuple(-(-c // s) for c, s in zip(current, step))
        steps.append(step)
    return steps


def _stride_downsample(x: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(x[tuple(slice(None, None, f) for f in factors)])


def _mean_downsample(x: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    pad = [(0, -n % f) for n, f in zip(x.shape, factors)]
    if any(p for _, p in pad):
        x = np.pad(x, pad, mode="edge")
    cells = x.reshape([v for n, f in zip(x.shape, factors) for v in (n // f, f)])
    mean = cells.mean(axis=tuple(range(1, cells.ndim, 2)), dtype=np.float32)
    if np.dtype(x.dtype).kind in "iu":
        mean = np.rint(mean)
    return mean.astype(x.dtype)
