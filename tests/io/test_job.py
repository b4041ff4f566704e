"""The prediction job: validation and the round trip through its stored record."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msd.io.job import JobSpec

from helpers.outputs import make_job


def test_job_round_trips_and_validates():
    job = make_job()
    assert job.halo == (3, 3, 3) and job.grid == (2, 3, 4) and job.n_blocks == 24
    assert job.labels_dtype == np.uint8
    assert make_job(n_classes=300, class_names=[], class_colors=[]).labels_dtype == np.uint16
    assert JobSpec.from_dict(job.to_dict()) == job
    assert job.block_slices((1, 2, 3)) == (slice(4, 5), slice(16, 20), slice(24, 27))
    for bad in (
        dict(input_shape=(4,)),
        dict(block_shape=(4, 8)),
        dict(class_names=["a"]),
        dict(probabilities="f32"),
        dict(output_format="n5"),
        dict(class_colors=["red"] * 3),
        dict(labels=False, probabilities="none"),
        dict(block_shape=(0, 8, 8)),
    ):
        with pytest.raises(ValueError):
            make_job(**bad)
    with pytest.raises(ValueError, match="lacks"):
        JobSpec.from_dict({"input": "x"})
