"""One rule for values in [0, 1] stored as integers or floats."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msd.base.quantise import quantise


def test_unsigned_integers_scale_round_and_clip():
    p = np.array([0.0, 0.5, 1.0, 1.2, -0.1, 0.25], np.float32)
    assert quantise(p, np.uint8).tolist() == [0, 128, 255, 255, 0, 64]
    assert quantise(p, np.uint16)[2] == 65535


def test_floats_are_cast_and_other_types_refused():
    p = np.array([0.25, 0.5], np.float32)
    assert quantise(p, np.float16).dtype == np.float16 and np.allclose(quantise(p, np.float16), p)
    with pytest.raises(ValueError, match="unsigned integers or floats"):
        quantise(p, np.int8)
