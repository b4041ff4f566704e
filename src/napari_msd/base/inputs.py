"""How a volume becomes network input: 2D slices, 2.5D slice stacks or 3D boxes.

The same functions cut training patches and prediction planes, so a model always sees
at prediction what it saw in training. Arrays are YX or ZYX and may be numpy, dask or
zarr: only the requested box is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: in-plane axes and the normal axis of each orientation of a ZYX volume
ORIENTATIONS = {"xy": ((1, 2), 0), "xz": ((0, 2), 1), "yz": ((0, 1), 2)}
MODES = ("2d", "2.5d", "3d")


@dataclass(frozen=True)
class InputSpec:
    """What one network input is: ``mode`` 2d / 2.5d / 3d, ``slices`` stacked as channels in 2.5d,
    and the ``orientations`` of a volume that 2D models are trained on (``xy`` by default)."""

    mode: str = "2d"
    slices: int = 1
    orientations: tuple[str, ...] = ("xy",)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"input mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "2.5d" and (self.slices < 3 or self.slices % 2 == 0):
            raise ValueError(
                f"2.5D input needs an odd number of slices >= 3 (the MS-D paper used 5), got {self.slices}"
            )
        if self.mode != "2.5d" and self.slices != 1:
            raise ValueError(f"{self.mode} input uses one slice; pass mode='2.5d' to stack {self.slices} slices")
        unknown = set(self.orientations) - set(ORIENTATIONS)
        if unknown or not self.orientations:
            raise ValueError(f"orientations must be among xy, xz, yz; got {list(self.orientations)}")
        if self.mode == "3d" and tuple(self.orientations) != ("xy",):
            raise ValueError("3D input has no orientation; leave orientations at ('xy',)")

    @property
    def in_channels(self) -> int:
        return self.slices if self.mode == "2.5d" else 1

    @property
    def model_ndim(self) -> int:
        return 3 if self.mode == "3d" else 2

    def check_image(self, ndim: int, name: str = "image") -> None:
        """Refuse image dimensionalities this input cannot be cut from, with one line."""
        if ndim not in (2, 3):
            raise ValueError(f"{name} has {ndim} dimensions; napari-msd works on YX or ZYX images")
        if ndim == 2 and self.mode != "2d":
            raise ValueError(f"{self.mode} input needs a ZYX volume but {name} is 2D; train a 2D model instead")
        if ndim == 2 and tuple(self.orientations) != ("xy",):
            raise ValueError(f"{name} is 2D: xz/yz orientations need a ZYX volume")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "slices": self.slices, "orientations": list(self.orientations)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(
            mode=data.get("mode", "2d"),
            slices=int(data.get("slices", 1)),
            orientations=tuple(data.get("orientations", ("xy",))),
        )


def plane_axes(ndim: int, orientation: str) -> tuple[tuple[int, int], int | None]:
    """In-plane axes and normal axis (None for a 2D image) of ``orientation``."""
    if ndim == 2:
        return (0, 1), None
    return ORIENTATIONS[orientation]


def mirror(indices: np.ndarray, n: int) -> np.ndarray:
    """Reflect indices into ``[0, n)`` (repeatedly, like the networks' reflective boundaries)."""
    if n == 1:
        return np.zeros_like(indices)
    period = 2 * (n - 1)
    indices = np.mod(indices, period)
    return np.where(indices >= n, period - indices, indices)


def box_start(center: int, size: int, n: int) -> int:
    """Start of a window of ``size`` around ``center`` kept inside an axis of length ``n``."""
    return int(min(max(center - size // 2, 0), max(n - size, 0)))


def read_input(
    image: Any, spec: InputSpec, center: Sequence[int] | np.ndarray, size: Sequence[int], orientation: str = "xy"
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Cut one network input around ``center`` (image coordinates).

    Returns ``(array, box)``: ``array`` is ``(channels, h, w)`` for 2d / 2.5d and
    ``(1, d, h, w)`` for 3d, and ``box`` the image region (slices per image axis) whose
    labels belong to it. ``size`` gives the in-plane (or 3D) extent; windows are kept
    inside the image, so ``size`` must not exceed it. 2.5D neighbours beyond the first
    or last slice are mirrored.
    """
    ndim = len(image.shape)
    if spec.mode == "3d":
        cube = tuple(slice(box_start(c, s, n), box_start(c, s, n) + s) for c, s, n in zip(center, size, image.shape))
        return np.asarray(image[cube])[None], cube
    (a, b), normal = plane_axes(ndim, orientation)
    box: list[slice] = [slice(None)] * ndim
    for axis, s in zip((a, b), size):
        start = box_start(center[axis], s, image.shape[axis])
        box[axis] = slice(start, start + s)
    if normal is None:
        return np.asarray(image[tuple(box)])[None], tuple(box)
    n = image.shape[normal]
    c = int(center[normal])
    offsets = np.arange(spec.slices) - spec.slices // 2
    wanted = mirror(c + offsets, n)
    lo, hi = int(wanted.min()), int(wanted.max()) + 1
    read = list(box)
    read[normal] = slice(lo, hi)
    block = np.asarray(image[tuple(read)])
    block = np.take(block, wanted - lo, axis=normal)
    block = np.moveaxis(block, normal, 0)  # (slices, plane_a, plane_b)
    label_box = list(box)
    label_box[normal] = slice(c, c + 1)
    return block, tuple(label_box)


def read_target(labels: Any, box: tuple[slice, ...], spec: InputSpec, orientation: str = "xy") -> np.ndarray:
    """Labels of an input cut by :func:`read_input`: ``(h, w)`` in 2d / 2.5d, ``(d, h, w)`` in 3d."""
    target = np.asarray(labels[box])
    if spec.mode == "3d" or len(labels.shape) == 2:
        return target
    _, normal = plane_axes(len(labels.shape), orientation)
    return np.take(target, 0, axis=normal)


#: extra input channels of an xy box: ``context(image, box) -> (K, h, w)`` float32 (a forest's class probabilities)
Context = Callable[[Any, tuple[slice, ...]], np.ndarray]


def network_input(
    image: Any,
    spec: InputSpec,
    normalization: Callable[[np.ndarray], np.ndarray],
    center: Sequence[int] | np.ndarray,
    size: Sequence[int],
    orientation: str = "xy",
    context: Context | None = None,
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """:func:`read_input`, normalised, with the ``context`` channels of its box appended after the image's
    (``napari_msd.base.forest_channels``); ``(array, box)``."""
    x, box = read_input(image, spec, center, size, orientation)
    x = normalization(x)
    if context is not None:
        x = np.concatenate([x, context(image, box)])
    return x, box
