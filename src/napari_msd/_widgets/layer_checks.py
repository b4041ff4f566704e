"""Checks of the layers a dock is asked to use, each failing with one line that says what to do."""

from __future__ import annotations

from typing import Any

from napari_msd.base.inputs import InputSpec
from napari_msd.errors import NapariMsdError


class LayerError(NapariMsdError):
    """A layer the docks cannot use; the message is one line for a notification."""


def image_array(layer: Any) -> Any:
    """The pixel array of an image layer (full resolution of a multiscale one), if napari-msd can segment it."""
    if layer is None:
        raise LayerError("choose an image layer (open an image, or File > Open Sample > napari-msd)")
    if getattr(layer, "rgb", False):
        raise LayerError(f"'{layer.name}' is an RGB image; convert it to one grayscale channel first")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if data.ndim not in (2, 3):
        raise LayerError(
            f"'{layer.name}' has {data.ndim} dimensions; napari-msd segments YX or ZYX images: "
            "split channels or time points into separate layers first"
        )
    if data.size == 0:
        raise LayerError(f"'{layer.name}' is empty")
    return data


def labels_array(layer: Any, image_layer: Any, image: Any) -> Any:
    """The labels of ``layer``, checked to match ``image`` pixel for pixel."""
    if layer is None:
        raise LayerError("choose a labels layer with painted strokes, or click 'New labels layer'")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if tuple(data.shape) != tuple(image.shape):
        raise LayerError(
            f"labels '{layer.name}' {tuple(data.shape)} and image '{image_layer.name}' "
            f"{tuple(image.shape)} differ in shape; paint labels on a layer made for this image"
        )
    return data


def check_model_input(spec: InputSpec | dict[str, Any], image: Any, name: str) -> None:
    """Refuse an image the model's input mode cannot be cut from (e.g. a 2.5D or 3D model on a 2D image)."""
    spec = spec if isinstance(spec, InputSpec) else InputSpec.from_dict(spec or {})
    try:
        spec.check_image(image.ndim, f"'{name}'")
    except ValueError as err:
        raise LayerError(str(err)) from None
