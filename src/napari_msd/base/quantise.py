"""Values in [0, 1] (probabilities, uncertainties) in a stored dtype: one rule for every output napari-msd writes."""

from __future__ import annotations

from typing import Any

import numpy as np


def quantise(values: np.ndarray, dtype: Any) -> np.ndarray:
    """``values`` in [0, 1] as ``dtype``: unsigned integers scale 0..1 to 0..max (uint8: 0..255, rounded to the
    nearest, clipped), floats are a cast."""
    dtype = np.dtype(dtype)
    values = np.asarray(values)
    if dtype.kind == "u":
        top = np.iinfo(dtype).max
        return np.clip(np.rint(values * np.float32(top)), 0, top).astype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"values in [0, 1] are stored as unsigned integers or floats, not {dtype}")
    return values.astype(dtype, copy=False)
