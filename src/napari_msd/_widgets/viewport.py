"""Where the user is looking, in a layer's pixel coordinates, and how to take the view to a region.

Layers are assumed to be displayed with their last two axes on screen (napari's default); scale and translate
are honoured, rotations and shears are not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_msd.inference.tiling import Region


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _to_data(layer: Any, world: np.ndarray, axes: list[int]) -> np.ndarray:
    scale = np.asarray(layer.scale, float)[axes]
    translate = np.asarray(layer.translate, float)[axes]
    return (np.asarray(world, float) - translate) / scale


def _world_axes(viewer: Any, layer: Any) -> list[int]:
    """World axes of the layer's axes (layers are aligned on their last axes)."""
    offset = viewer.dims.ndim - layer.ndim
    return [offset + i for i in range(layer.ndim)]


def current_plane(viewer: Any, layer: Any) -> int | None:
    """The index of the plane on screen along the layer's first axis (ZYX layers), else None."""
    if layer.ndim < 3:
        return None
    axis = _world_axes(viewer, layer)[0]
    world = viewer.dims.point[axis]
    z = _to_data(layer, np.array([world]), [0])[0]
    return int(
        np.clip(round(float(z)), 0, layer.data.shape[0] - 1) if hasattr(layer.data, "shape") else round(float(z))
    )


def visible_region(viewer: Any, layer: Any, shape: tuple[int, ...], max_side: int = 768) -> Region:
    """The part of ``layer`` (an image of ``shape``) on screen: the current plane of a volume and the canvas
    area in the last two axes, clipped to the image and to at most ``max_side`` pixels around the centre."""
    canvas = np.asarray(getattr(getattr(viewer, "canvas", None), "size", (600, 800)), float)
    zoom = float(getattr(camera(viewer), "zoom", 1.0)) or 1.0
    center_world = np.asarray(camera(viewer).center, float)[-2:]
    half_world = canvas / zoom / 2
    axes = [layer.ndim - 2, layer.ndim - 1]
    lo = _to_data(layer, center_world - half_world, axes)
    hi = _to_data(layer, center_world + half_world, axes)
    mid = (lo + hi) / 2
    region: list[slice] = []
    if len(shape) == 3:
        z = current_plane(viewer, layer)
        z = 0 if z is None else int(np.clip(z, 0, shape[0] - 1))
        region.append(slice(z, z + 1))
    for i, n in enumerate(shape[-2:]):
        a, b = sorted((lo[i], hi[i]))
        a, b = max(a, mid[i] - max_side / 2), min(b, mid[i] + max_side / 2)
        start = int(np.clip(np.floor(a), 0, n - 1))
        stop = int(np.clip(np.ceil(b), start + 1, n))
        region.append(slice(start, stop))
    return tuple(region)


def go_to(viewer: Any, layer: Any, region: Region, margin: float = 1.6) -> None:
    """Show ``region`` of ``layer``: its plane, centred, zoomed so it fills the canvas with some margin."""
    world_axes = _world_axes(viewer, layer)
    scale = np.asarray(layer.scale, float)
    translate = np.asarray(layer.translate, float)
    center = np.array([(r.start + r.stop - 1) / 2 for r in region]) * scale + translate
    if len(region) == 3:
        step = list(viewer.dims.point)
        step[world_axes[0]] = center[0]
        viewer.dims.point = step
    camera(viewer).center = tuple(center[-2:])
    size = np.array([r.stop - r.start for r in region[-2:]], float) * scale[-2:]
    canvas = np.asarray(getattr(getattr(viewer, "canvas", None), "size", (600, 800)), float)
    camera(viewer).zoom = float(np.min(canvas / (size * margin)))
