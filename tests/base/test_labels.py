"""The labels dtype: uint8 while class ids fit, uint16 beyond."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msd.base.labels import labels_dtype


def test_uint8_up_to_255_classes_then_uint16():
    assert labels_dtype(1) == labels_dtype(255) == np.uint8
    assert labels_dtype(256) == np.uint16


def test_no_classes_is_an_error():
    with pytest.raises(ValueError, match="at least one class"):
        labels_dtype(0)
