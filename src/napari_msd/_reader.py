"""napari readers: napari-msd prediction outputs, and the MRC family that napari does not read itself.

**Prediction outputs** (``napari-msd predict``; plain zarr v3 or OME-Zarr 0.5 stores): opening ``result.msd.zarr``
(or an older ``result.zarr`` / ``result.ome.zarr``) gives a Labels layer "prediction" with the class colours and
names (the status bar shows ``class: membrane`` under the cursor; ``metadata["class_names"]`` feeds the Model dock
when the layer is selected), and, when the job wrote probabilities, one hidden Image layer "p(<class>)" per class.
Everything stays lazy: zarr arrays (labels) or dask views (one class of the probabilities), and the whole pyramid of
a finalized OME-Zarr output as multiscale layers. The store is opened read-only. Anything that is not a napari-msd
output is left to other readers (``None``).

napari offers every reader that accepts folders for every folder (npe2 ignores ``filename_patterns`` for folders),
so without a preference it asks which reader to use. Whenever napari-msd reads something it therefore adds the reader
preferences ``*.msd.zarr/`` and ``*.msd.ome.zarr/`` -> napari-msd (what "Remember this choice" would set), never
replacing one the user set: from then on File > Open, drag and drop and ``napari result.msd.zarr`` open outputs named
so without asking. Older outputs without ``.msd`` in their name still ask (or take ``plugin="napari-msd"``).

**MRC** (``.mrc .rec .st .map .ali .mrcs``): one Image layer named after the file, a dask array over the memory map
(one chunk per Z slice, so only the slices on screen are read), contrast limits from the 0.5 and 99.5 percentiles of
a few evenly spaced, subsampled slices, and the header's voxel size as ``scale`` in ångström (Z, Y, X), as MRC
headers, IMOD and ChimeraX give it; no scale when the header has none. ``.npy`` is left to napari's own reader.

This module imports napari only to add the reader preferences above, and never Qt: it returns LayerData tuples.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LABELS_LAYER = "prediction"
UNLABELED = "unlabeled"  # label 0: not (yet) predicted, as in painted labels
PLUGIN = "napari-msd"
DISPLAY_PERCENTILES = (0.5, 99.5)
SAMPLE_SLICES = 7  # slices read for contrast limits
SAMPLE_PIXELS = 1 << 20  # at most this many pixels per sampled slice (rows and columns subsampled)

LayerData = tuple[Any, dict[str, Any], str]


def _single_path(path: Any) -> Path | None:
    """The one path napari asks about (a list of one is unwrapped), or None for several or for non-paths."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | os.PathLike):
        return None
    return Path(os.path.expanduser(os.fspath(path)))


def get_reader(path: str | os.PathLike[str] | list[Any]) -> Callable[[Any], list[LayerData]] | None:
    """The reader for ``path`` when it is a napari-msd prediction output directory, else ``None``."""
    folder = _single_path(path)
    if folder is None or not _is_prediction_output(folder):
        return None
    remember_reader_for_outputs()
    return read_prediction


def get_mrc_reader(path: str | os.PathLike[str] | list[Any]) -> Callable[[Any], list[LayerData]] | None:
    """The reader for one MRC-family file (``.mrc .rec .st .map .ali .mrcs``), else ``None``."""
    from .io.images import MRC_SUFFIXES

    file = _single_path(path)
    if file is None:
        return None
    if file.suffix.lower() not in MRC_SUFFIXES or not file.is_file():
        return None
    remember_reader_for_outputs()
    return read_mrc


def remember_reader_for_outputs() -> None:
    """Prefer napari-msd for ``*.msd.zarr`` / ``*.msd.ome.zarr`` folders in napari's reader preferences.

    Only inside a napari session (napari already imported), and never replacing a preference the user set.
    """
    import sys

    if "napari" not in sys.modules:
        return
    try:
        from napari.settings import get_settings

        from .io.outputs import OUTPUT_SUFFIXES

        plugins = get_settings().plugins
        current = dict(plugins.extension2reader)
        # napari matches folder preferences against "<real path>/" with fnmatch ('*' spans folders)
        missing = {f"*{suffix}/": PLUGIN for suffix in OUTPUT_SUFFIXES if f"*{suffix}/" not in current}
        if missing:
            plugins.extension2reader = {**current, **missing}
    except Exception:  # noqa: BLE001 -- a preference is a convenience; reading must not fail over it
        return


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
    info = {
        "path": str(output.path),
        "job": job.to_dict(),
        "finalized": output.finalized,
        "blocks_done": len(output.done()),
        "n_blocks": job.n_blocks,
    }
    class_names = {i + 1: name for i, name in enumerate(names)}
    layers: list[LayerData] = []

    if job.probabilities != "none":
        import dask.array as da

        levels = [da.from_zarr(level) for level in output.open_probabilities(multiscale=True)]
        top = 255 if job.probabilities == "uint8" else 1.0
        for k, (name, color) in enumerate(zip(names, colors)):
            data = [level[k] for level in levels]
            layers.append(
                (
                    data if len(data) > 1 else data[0],
                    {
                        "name": f"p({name})",
                        "multiscale": len(data) > 1,
                        "colormap": "gray" if color == "#000000" else color,  # black to the class colour
                        "blending": "additive",
                        "contrast_limits": (0, top),
                        "visible": False,
                        "metadata": {
                            "napari_msd": info,
                            "class": name,
                            "class_index": k + 1,
                            "probability_scale": 255 if top == 255 else 1,
                        },
                    },
                    "image",
                )
            )

    if job.labels:
        levels = output.open_labels(multiscale=True)
        colormap: dict[int | None, str] = {None: "transparent", 0: "transparent"}
        colormap.update({i + 1: color for i, color in enumerate(colors)})
        layers.append(
            (
                levels if len(levels) > 1 else levels[0],
                {
                    "name": LABELS_LAYER,
                    "multiscale": len(levels) > 1,
                    "colormap": colormap,
                    "features": {"index": list(range(len(names) + 1)), "class": [UNLABELED, *names]},
                    "metadata": {
                        "napari_msd": info,
                        "class_names": class_names,
                        "class_colors": dict(enumerate(colors, 1)),
                    },
                },
                "labels",
            )
        )
    return layers


def read_mrc(path: str | os.PathLike[str] | list[Any]) -> list[LayerData]:
    """LayerData of an MRC file: one lazy Image layer with sampled contrast limits and the voxel size as scale (Å)."""
    import dask.array as da

    from .io.images import open_image

    if isinstance(path, list | tuple):
        path = path[0]
    file = Path(os.path.expanduser(os.fspath(path)))
    image = open_image(file)  # ImageReadError: one line naming the file and what to do
    chunks = (1,) * (image.ndim - 2) + tuple(image.shape[-2:])
    data = da.from_array(
        image,
        chunks=chunks,
        asarray=False,
        lock=False,
        fancy=False,
        meta=np.empty((0,) * image.ndim, image.dtype),
        name=f"napari-msd-mrc-{_token(file)}",
    )
    meta: dict[str, Any] = {
        "name": file.stem,
        "contrast_limits": contrast_limits(image),
        "metadata": {"path": str(file), "format": "mrc"},
    }
    voxel = mrc_voxel_size(file)
    if voxel is not None:
        meta["scale"] = voxel[-image.ndim :]
        meta["metadata"]["voxel_size_angstrom"] = list(voxel[-image.ndim :])
    return [(data, meta, "image")]


def _token(file: Path) -> str:
    """A dask name for this file's current contents (path, size and modification time)."""
    import hashlib

    stat = file.stat()
    return hashlib.sha1(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def contrast_limits(image: Any) -> tuple[float, float]:
    """Display range from the :data:`DISPLAY_PERCENTILES` of up to :data:`SAMPLE_SLICES` evenly spaced,
    subsampled slices of a YX or ZYX array (never a full read of a volume)."""
    shape = tuple(image.shape)
    step = max(1, math.ceil(math.sqrt(shape[-2] * shape[-1] / SAMPLE_PIXELS)))
    if len(shape) == 2:
        samples = [np.asarray(image[::step, ::step])]
    else:
        planes = np.unique(np.linspace(0, shape[0] - 1, min(shape[0], SAMPLE_SLICES)).round().astype(int))
        samples = [np.asarray(image[int(z), ::step, ::step]) for z in planes]
    values = np.concatenate([s.ravel() for s in samples]).astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    low, high = (float(v) for v in np.percentile(values, DISPLAY_PERCENTILES))
    if high <= low:  # flat (or nearly flat) image: widen to the sample's range, then to one unit
        low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1.0
    return (low, high)


def mrc_voxel_size(file: Path) -> tuple[float, float, float] | None:
    """Voxel size (Z, Y, X) in ångström from an MRC header, or ``None`` when the header has none."""
    import mrcfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(file, header_only=True, permissive=True) as mrc:
                size = mrc.voxel_size
                x, y, z = float(size.x), float(size.y), float(size.z)
    except Exception:  # noqa: BLE001 -- the pixels opened; a header we cannot interpret just gives no scale
        return None
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    if not (math.isfinite(z) and z > 0):
        z = x  # e.g. image stacks (.mrcs) without a Z cell size: display sections at the in-plane spacing
    return (z, y, x)
