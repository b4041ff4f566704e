"""The integer type of a labels array: class ids 1..K with 0 for unlabeled, in the smallest unsigned dtype."""

from __future__ import annotations

import numpy as np


def labels_dtype(n_classes: int) -> np.dtype:
    """uint8 for up to 255 classes (ids 1..255, 0 = unlabeled), else uint16."""
    if n_classes < 1:
        raise ValueError(f"a labels array needs at least one class, got {n_classes}")
    return np.dtype(np.uint8 if n_classes <= 255 else np.uint16)
