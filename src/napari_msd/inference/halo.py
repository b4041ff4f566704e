"""Measure the effective halo: how much context a trained network really needs at tile borders.

The theoretical receptive field of an MS-D network is large (550 px at depth 100) but the output
of a trained one hardly depends on pixels that far away. :func:`measure_effective_halo` finds the
smallest halo that changes almost no label:

1. a validation ``region`` (default: the central 256 x 256 of the middle slice; a central cube of up
   to 64^3 for 3D models) is predicted in one block with a halo of the receptive field (clipped to
   the image): the reference, equal to whole-image prediction;
2. the region is cut into small blocks (64 px in-plane, 32^3 in 3D, one slice deep for 2D models on
   volumes) and predicted with each candidate halo in increasing order (0, 8, 16, 24, 32, 48, 64, 96,
   128, ... below the receptive field). Small blocks put most pixels near a block border, so a halo
   that is good enough for them is good enough for the larger blocks used in prediction;
3. the first candidate whose argmax labels agree with the reference on at least ``agreement`` of the
   region's pixels is returned (the receptive field if none does).

The image is read once: the region plus the reference halo (plus 2.5D neighbour slices). Store the
result with the model (``save_model(..., effective_halo=h)``) and :class:`.Predictor` uses it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..io.model_file import ModelMetadata
from ..models.precision import inference_precision
from .predictor import Predictor
from .tiling import Block, Region, normalize_region, plan_blocks

DEFAULT_CANDIDATES = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
REGION_PLANE, REGION_CUBE = 256, 64
BLOCK_PLANE, BLOCK_CUBE = 64, 32


class _Window:
    """An image restricted to one box, read once; reads outside the box raise ``IndexError``."""

    def __init__(self, image: Any, box: Region):
        self.shape, self.dtype, self.box = tuple(image.shape), image.dtype, box
        self.ndim = len(self.shape)
        self.data = np.asarray(image[box])

    def __getitem__(self, key: Region) -> np.ndarray:
        local = []
        for k, b in zip(key, self.box, strict=True):
            if k.start < b.start or k.stop > b.stop:
                raise IndexError(f"read {key} outside the region read for the measurement, {self.box}")
            local.append(slice(k.start - b.start, k.stop - b.start))
        return self.data[tuple(local)]


def _as_predictor(obj: Predictor | tuple[torch.nn.Module, ModelMetadata]) -> Predictor:
    return obj if isinstance(obj, Predictor) else Predictor(*obj)


def default_region(predictor: Predictor, shape: Sequence[int]) -> Region:
    """The central 256 x 256 (at most) of the middle slice; a central cube of up to 64^3 for 3D models."""
    normal = predictor.normal_axis(len(shape))
    size = REGION_CUBE if predictor.spec.model_ndim == 3 else REGION_PLANE
    region = []
    for axis, n in enumerate(shape):
        s = 1 if axis == normal else min(size, n)
        start = n // 2 if axis == normal else (n - s) // 2
        region.append(slice(start, start + s))
    return tuple(region)


def _sub_blocks(
    predictor: Predictor, shape: Sequence[int], region: Region, block_shape: Sequence[int] | int | None, halo: int
) -> list[Block]:
    """``region`` cut into blocks of ``block_shape``, each with ``halo`` of context within the image."""
    ndim = len(shape)
    if block_shape is None:
        normal = predictor.normal_axis(ndim)
        side = BLOCK_CUBE if predictor.spec.model_ndim == 3 else BLOCK_PLANE
        block_shape = tuple(1 if axis == normal else side for axis in range(ndim))
    local = plan_blocks([r.stop - r.start for r in region], block_shape)
    outs = [tuple(slice(o.start + r.start, o.stop + r.start) for o, r in zip(b.out, region)) for b in local]
    return [predictor.region_block(shape, out, halo) for out in outs]


class _OutOfTime(Exception):
    """The measurement's deadline passed."""


def _labels(
    predictor: Predictor, image: Any, blocks: list[Block], region: Region, deadline: float | None = None
) -> np.ndarray:
    """Argmax labels (0..K-1) of ``region`` stitched from ``blocks``; :class:`_OutOfTime` once ``deadline`` passed."""
    out = np.empty([r.stop - r.start for r in region], np.int32)
    for block in blocks:
        if deadline is not None and time.perf_counter() >= deadline:
            raise _OutOfTime
        local = tuple(slice(o.start - r.start, o.stop - r.start) for o, r in zip(block.out, region))
        out[local] = predictor.predict_block(image, block).argmax(0)
    return out


def measure_effective_halo(
    predictor: Predictor | tuple[torch.nn.Module, ModelMetadata],
    image: Any,
    region: Sequence[slice | int] | None = None,
    agreement: float = 0.999,
    candidates: Sequence[int] | None = None,
    *,
    block_shape: int | Sequence[int] | None = None,
    reference_halo: int | None = None,
    deadline: float | None = None,
) -> int | None:
    """The smallest candidate halo (pixels) whose tiled labels agree with a large-halo reference on at least
    ``agreement`` of ``region``'s pixels; see the module docstring. None when ``deadline`` (a
    ``time.perf_counter()`` value, checked before each predicted block) passes first.

    ``predictor``: a :class:`.Predictor` or ``(model, metadata)``. ``region``: slices in image coordinates
    (default :func:`default_region`). ``block_shape``: the blocks the region is cut into for the candidates.
    ``reference_halo``: the reference's halo (default: the receptive field; lower it for 3D networks whose
    receptive field does not fit in memory). Returns the reference halo when no smaller candidate agrees. Predicts
    in float32 (:mod:`napari_msd.models.precision`): the halo measures context, not rounding.
    """
    with inference_precision("float32"):
        return _measure(predictor, image, region, agreement, candidates, block_shape, reference_halo, deadline)


def _measure(
    predictor: Predictor | tuple[torch.nn.Module, ModelMetadata],
    image: Any,
    region: Sequence[slice | int] | None,
    agreement: float,
    candidates: Sequence[int] | None,
    block_shape: int | Sequence[int] | None,
    reference_halo: int | None,
    deadline: float | None,
) -> int | None:
    predictor = _as_predictor(predictor)
    shape = tuple(int(n) for n in image.shape)
    predictor.spec.check_image(len(shape))
    region = default_region(predictor, shape) if region is None else normalize_region(region, shape)
    if any(r.stop <= r.start for r in region):
        raise ValueError(f"the validation region {region} is empty")
    if not 0 < agreement <= 1:
        raise ValueError(f"agreement must be in (0, 1], got {agreement}")
    ref_halo = predictor.receptive_field if reference_halo is None else int(reference_halo)
    reference_block = predictor.region_block(shape, region, ref_halo)
    window = _Window(image, predictor.read_box(shape, reference_block))
    try:
        reference = _labels(predictor, window, [reference_block], region, deadline)
        for halo in sorted({int(c) for c in (DEFAULT_CANDIDATES if candidates is None else candidates)}):
            if halo >= ref_halo:
                break
            blocks = _sub_blocks(predictor, shape, region, block_shape, halo)
            if np.mean(_labels(predictor, window, blocks, region, deadline) == reference) >= agreement:
                return halo
    except _OutOfTime:
        return None
    return ref_halo
