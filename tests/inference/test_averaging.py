"""Averaging a 2D model's xy, xz and yz predictions over isotropic volumes, tiled and in batch apply."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_msd.base.inputs import InputSpec
from napari_msd.inference.averaging import OrientationAverage
from napari_msd.inference.batch import BatchError, prepare, run
from napari_msd.inference.predictor import Predictor
from napari_msd.io import save_model

from helpers.networks import NORM, image, metadata, msd


@pytest.mark.parametrize("spec", [InputSpec(), InputSpec(mode="2.5d", slices=3)])
def test_tiled_average_equals_the_mean_of_three_whole_volume_predictions(spec):
    net = msd(spec.in_channels)
    averager = OrientationAverage(Predictor(net, metadata(net, spec)))
    volume = image((22, 26, 24))
    reference = np.mean(
        [Predictor(net, metadata(net, spec), orientation=o).predict(volume) for o in ("xy", "xz", "yz")], axis=0
    )
    assert np.allclose(averager.predict(volume), reference, atol=1e-6)
    probs = np.zeros((3, *volume.shape), np.float32)
    labels = np.zeros(volume.shape, np.uint8)
    blocks = list(averager.run(volume, labels, probs, block_shape=(9, 10, 11), halo=net.receptive_field))
    assert len(blocks) == 3 * 3 * 3
    assert np.abs(probs - reference).max() < 1e-5
    assert np.array_equal(labels, reference.argmax(0) + 1)
    single = Predictor(net, metadata(net, spec)).predict(volume)
    assert np.abs(reference - single).max() > 1e-3  # averaging really changes the prediction


def test_averaging_needs_a_2d_model_on_a_volume():
    net3d = msd(ndim=3)
    with pytest.raises(ValueError, match="2D"):
        OrientationAverage(Predictor(net3d, metadata(net3d, InputSpec(mode="3d"))))
    net = msd()
    with pytest.raises(ValueError, match="ZYX volume"):
        list(OrientationAverage(Predictor(net, metadata(net, InputSpec()))).blocks(np.zeros((20, 20), np.uint8)))


def test_batch_apply_averages_and_records_it_in_the_job(tmp_path):
    net = msd()
    model = save_model(
        tmp_path / "m.msd",
        net,
        class_names=["a", "b", "c"],
        normalization=NORM.to_dict(),
        input_spec=InputSpec().to_dict(),
    )
    volume = image((12, 20, 18))
    np.save(tmp_path / "v.npy", volume)
    job = prepare(
        model,
        str(tmp_path / "v.npy"),
        tmp_path / "out.zarr",
        average_orientations=True,
        tile_size=8,
        halo=net.receptive_field,
        device="cpu",
    )
    assert job.spec.options == {"average_orientations": True} and job.spec.block_shape == (8, 8, 8)
    list(run(job))
    reference = OrientationAverage(Predictor(net, metadata(net, InputSpec()))).predict(volume)
    assert np.array_equal(zarr.open_group(tmp_path / "out.zarr")["labels"][:], reference.argmax(0) + 1)
    np.save(tmp_path / "flat.npy", volume[0])
    with pytest.raises(BatchError, match="ZYX volume"):
        prepare(model, str(tmp_path / "flat.npy"), tmp_path / "out2.zarr", average_orientations=True)
