"""Sample data: a crop of the ISBI 2012 EM training set with example strokes.

Data: serial-section TEM of the Drosophila first instar larva ventral nerve cord (Cardona et al., PLoS Biol.
2010), the training set of the ISBI 2012 challenge "Segmentation of neuronal structures in EM stacks"
(Arganda-Carreras et al., Front. Neuroanat. 2015). Regenerate the file with ``scripts/make_sample_data.py``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np

SAMPLE_FILE = "isbi_sample.npz"
CLASS_NAMES = {1: "membrane", 2: "cell interior"}
CLASS_COLORS = {None: "transparent", 0: "transparent", 1: "#ff40ff", 2: "#40ff40"}
CREDIT = "ISBI 2012 EM segmentation challenge (Cardona et al. 2010; Arganda-Carreras et al., Front. Neuroanat. 2015)"


def read_sample() -> dict[str, np.ndarray]:
    """The arrays of the packaged sample file (``image``, ``ground_truth``, ``strokes``, ...), without napari."""
    with files("napari_msd").joinpath("data", SAMPLE_FILE).open("rb") as fh, np.load(fh) as npz:
        return {key: npz[key] for key in npz.files}


def load_sample() -> list[tuple[Any, dict, str]]:
    """ISBI 2012 EM crop (8 x 256 x 256) with example strokes on two slices, as napari LayerData tuples.

    Layers: the image "EM (ISBI 2012 crop)", a Labels layer "strokes" (1 = membrane, 2 = cell interior;
    0 = unlabeled) and a hidden Labels layer "ground truth" (the dense labels of the crop).
    Source: Cardona et al. 2010; ISBI 2012 challenge, Arganda-Carreras et al., Front. Neuroanat. 2015.
    """
    sample = read_sample()
    metadata = {
        "source": str(sample["source"]),
        "credit": CREDIT,
        "crop_origin_zyx": sample["origin"].tolist(),
        "class_names": dict(CLASS_NAMES),
        "stroke_slices": sample["stroke_slices"].tolist(),
    }
    colormap = dict(CLASS_COLORS)
    return [
        (sample["image"], {"name": "EM (ISBI 2012 crop)", "colormap": "gray", "metadata": dict(metadata)}, "image"),
        (sample["strokes"], {"name": "strokes", "colormap": colormap, "metadata": dict(metadata)}, "labels"),
        (
            sample["ground_truth"],
            {"name": "ground truth", "colormap": dict(colormap), "visible": False, "metadata": dict(metadata)},
            "labels",
        ),
    ]
