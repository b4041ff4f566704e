"""Averaging a 2D model's xy, xz and yz predictions of an isotropic ZYX volume.

A 2D (or 2.5D) model sees one plane at a time; on isotropic data (FIB-SEM, tomograms) the planes
through the other two axes carry the same kind of information, and the mean of the three
predictions is smoother along z than slice-by-slice prediction. :class:`OrientationAverage` wraps a
:class:`~.predictor.Predictor` with the interface batch apply uses: cubic blocks with a halo on all
three axes, each predicted through every orientation (with that orientation's 2.5D context and
in-plane halo) and averaged, so tiled results equal the average of whole-volume predictions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..base.labels import labels_dtype
from .predictor import BlockDone, Predictor, StopFlag, stopper
from .sinks import write_blocks
from .tiling import Block, make_block, order_blocks, plan_blocks

ORIENTATION_NAMES = ("xy", "xz", "yz")
MAX_SIDE = 256


class OrientationAverage:
    """Mean of a 2D model's predictions along xy, xz and yz (2D models on ZYX volumes only)."""

    def __init__(self, predictor: Predictor):
        if predictor.spec.model_ndim != 2:
            raise ValueError("averaging orientations needs a 2D (or 2.5D) model; 3D models see all axes already")
        self.base = predictor
        self.views = [
            Predictor(
                predictor.model,
                predictor.metadata,
                predictor.device,
                predictor.batch_size,
                orientation=o,
                memory_budget=predictor.memory_budget,
                readers=predictor.readers,
            )
            for o in ORIENTATION_NAMES
        ]
        self.spec, self.metadata, self.n_classes = predictor.spec, predictor.metadata, predictor.n_classes

    def _check(self, shape: Sequence[int]) -> None:
        if len(shape) != 3:
            raise ValueError(f"averaging orientations needs a ZYX volume, got an image of shape {tuple(shape)}")

    # the geometry batch apply asks for: cubic blocks, the same halo on every axis
    def normal_axis(self, ndim: int) -> None:
        return None

    def halo_per_axis(self, halo: int | Sequence[int], ndim: int) -> tuple[int, ...]:
        return tuple(int(halo) for _ in range(ndim)) if isinstance(halo, int | np.integer) else tuple(halo)

    def default_halo(self, ndim: int) -> tuple[int, ...]:
        return self.halo_per_axis(self.base.halo_radius, ndim)

    def align(self, ndim: int) -> tuple[int, ...]:
        return tuple(max(v.align(ndim)[a] for v in self.views) for a in range(ndim))

    def default_block_shape(self, shape: Sequence[int], halo: int | Sequence[int] | None = None) -> tuple[int, ...]:
        """Cubes up to 256^3, shrunk in steps of 16 until one plane input with its halo fits the memory budget."""
        halo = self.default_halo(len(shape)) if halo is None else self.halo_per_axis(halo, len(shape))
        side = MAX_SIDE
        while side > 16 and (side + 2 * max(halo)) ** 2 * self.base.bytes_per_pixel() > self.base.memory_budget:
            side -= 16
        return tuple(min(side, n) for n in shape)

    def plan(
        self,
        shape: Sequence[int],
        block_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] | None = None,
    ) -> list[Block]:
        self._check(shape)
        halo = self.default_halo(len(shape)) if halo is None else self.halo_per_axis(halo, len(shape))
        block_shape = self.default_block_shape(shape, halo) if block_shape is None else block_shape
        return plan_blocks(tuple(shape), block_shape, halo, self.align(len(shape)))

    def compute_block(self, image: Any, block: Block, *, labels: bool = True, probabilities: bool = True) -> BlockDone:
        """The mean of the three orientations' probabilities over ``block.out`` (and its argmax labels)."""
        start = time.perf_counter()
        shape = tuple(image.shape)
        halo = tuple(o.start - i.start for o, i in zip(block.out, block.inp))  # at least the requested halo
        halo = tuple(max(h, i.stop - o.stop) for h, o, i in zip(halo, block.out, block.inp))
        total: np.ndarray | None = None
        for view in self.views:
            normal = view.normal_axis(3)
            view_halo = tuple(0 if axis == normal else h for axis, h in enumerate(halo))
            sub = make_block(shape, block.out, view_halo, view.align(3), index=block.index)
            p = view.predict_block(image, sub).astype(np.float64)
            total = p if total is None else total + p
        assert total is not None  # there are always three views
        mean = (total / len(self.views)).astype(np.float32)
        lab = (mean.argmax(axis=0) + 1).astype(labels_dtype(self.n_classes)) if labels else None
        return BlockDone(block, lab, mean if probabilities else None, time.perf_counter() - start)

    def predict(self, image: Any) -> np.ndarray:
        """The untiled reference: the mean of the three whole-volume predictions."""
        self._check(image.shape)
        views = iter(self.views)
        total = next(views).predict(image).astype(np.float64)
        for view in views:
            total += view.predict(image)
        return (total / len(self.views)).astype(np.float32)

    def blocks(
        self,
        image: Any,
        block_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] | None = None,
        first: Sequence[slice | int] | None = None,
        skip: Sequence[tuple[int, ...]] = (),
        stop: StopFlag = None,
        *,
        labels: bool = True,
        probabilities: bool = True,
    ) -> Iterator[BlockDone]:
        """Blocks in plan (or ``first``) order, like :meth:`Predictor.blocks`."""
        done, stopped = {tuple(i) for i in skip}, stopper(stop)
        for block in order_blocks(self.plan(image.shape, block_shape, halo), first):
            if block.index in done:
                continue
            if stopped():
                return
            yield self.compute_block(image, block, labels=labels, probabilities=probabilities)

    def run(
        self, image: Any, labels_out: Any = None, probabilities_out: Any = None, **blocks_kwargs: Any
    ) -> Iterator[BlockDone]:
        """:meth:`blocks`, writing into ``labels_out`` / ``probabilities_out`` like :meth:`Predictor.run`."""
        yield from write_blocks(self, image, labels_out, probabilities_out, **blocks_kwargs)
