"""napari reader for napari-msd prediction outputs (``napari-msd predict``): plain zarr v3 or OME-Zarr 0.5 stores.

Opening ``result.zarr`` or ``result.ome.zarr`` gives a Labels layer "prediction" with the class colours and
names (the status bar shows ``class: membrane`` under the cursor; ``metadata["class_names"]`` feeds the
Model dock when the layer is selected), and, when the job wrote probabilities, one hidden Image layer
"p(<class>)" per class. Everything stays lazy: zarr arrays (labels) or dask views (one class of the
probabilities), and the whole pyramid of a finalized OME-Zarr output as multiscale layers. The store is
opened read-only. Anything that is not a napari-msd output is left to other readers (``None``).

This module imports neither napari nor Qt: it only returns LayerData tuples.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

LABELS_LAYER = "prediction"
UNLABELED = "unlabeled"  # label 0: not (yet) predicted, as in painted labels

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | os.PathLike[str] | list[Any]) -> Callable[[Any], list[LayerData]] | None:
    """The reader for ``path`` when it is a napari-msd prediction output directory, else ``None``."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | os.PathLike):
        return None
    if not _is_prediction_output(Path(os.path.expanduser(os.fspath(path)))):
        return None
    return read_prediction


def _is_prediction_output(path: Path) -> bool:
    if not path.is_dir() or not (path / "zarr.json").is_file():
        return False
    from .io.outputs import open_output

    try:
        open_output(path, writable=False)
    except Exception:  # noqa: BLE001 -- anything unreadable is simply not ours; let other readers try
        return False
    return True


def read_prediction(path: str | os.PathLike[str] | list[Any]) -> list[LayerData]:
    """LayerData of a napari-msd prediction output: probability images (if written), then the labels."""
    from .io.outputs import open_output

    if isinstance(path, list | tuple):
        path = path[0]
    output = open_output(Path(os.path.expanduser(os.fspath(path))), writable=False)
    job = output.job
    names, colors = list(job.class_names), list(job.class_colors)
    info = {"path": str(output.path), "job": job.to_dict(), "finalized": output.finalized,
            "blocks_done": len(output.done()), "n_blocks": job.n_blocks}
    class_names = {i + 1: name for i, name in enumerate(names)}
    layers: list[LayerData] = []

    if job.probabilities != "none":
        import dask.array as da

        levels = [da.from_zarr(level) for level in output.open_probabilities(multiscale=True)]
        top = 255 if job.probabilities == "uint8" else 1.0
        for k, (name, color) in enumerate(zip(names, colors)):
            data = [level[k] for level in levels]
            layers.append((data if len(data) > 1 else data[0], {
                "name": f"p({name})",
                "multiscale": len(data) > 1,
                "colormap": "gray" if color == "#000000" else color,  # black to the class colour
                "blending": "additive",
                "contrast_limits": (0, top),
                "visible": False,
                "metadata": {"napari_msd": info, "class": name, "class_index": k + 1,
                             "probability_scale": 255 if top == 255 else 1},
            }, "image"))

    if job.labels:
        levels = output.open_labels(multiscale=True)
        colormap: dict[int | None, str] = {None: "transparent", 0: "transparent"}
        colormap.update({i + 1: color for i, color in enumerate(colors)})
        layers.append((levels if len(levels) > 1 else levels[0], {
            "name": LABELS_LAYER,
            "multiscale": len(levels) > 1,
            "colormap": colormap,
            "features": {"index": list(range(len(names) + 1)), "class": [UNLABELED, *names]},
            "metadata": {"napari_msd": info, "class_names": class_names, "class_colors": dict(enumerate(colors, 1))},
        }, "labels"))
    return layers
