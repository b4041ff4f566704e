"""What the docks agree on, so that none imports another: the live preview layer, class colours as a labels
colormap, and the file filters of model dialogs."""

from __future__ import annotations

from typing import Any

PREVIEW_LAYER = "live preview"
MODEL_FILE_FILTER = "napari-msd models (*.msd *.safetensors *.zip);;All files (*)"  # .zip: a bioimage.io package
PACKAGE_FILE_FILTER = "bioimage.io model packages (*.zip)"


def is_preview(layer: Any) -> bool:
    """Whether ``layer`` is a Train dock's live preview (by name, or by the metadata it is made with)."""
    return layer.name == PREVIEW_LAYER or bool(layer.metadata.get("napari_msd_preview"))


def class_colormap(colors: list[str]) -> dict[Any, str]:
    """A labels colormap: class ``i`` (1-based) in ``colors[i - 1]``, unlabeled transparent."""
    return {None: "transparent", 0: "transparent", **{i + 1: c for i, c in enumerate(colors)}}
