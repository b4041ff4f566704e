"""Batch apply (``prepare`` / ``run``): tiled output equals whole-image prediction, the event stream, stopping
and resuming in this process, and finalized OME-Zarr outputs with a pyramid and class names; several inputs
(``batch_events``) and their output names."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_msd.inference import Predictor
from napari_msd.inference.batch import (
    BatchError,
    BatchFinished,
    BatchStarted,
    BlockWritten,
    InputEvent,
    Prepared,
    batch_events,
    output_name,
    prepare,
    run,
)
from napari_msd.io.outputs import open_output

from helpers.batch import CLASSES, SHAPE, make_model, make_volume


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """The model file, the volume as .npy and as a zarr array, and the whole-image reference prediction."""
    root = tmp_path_factory.mktemp("batch")
    model = make_model(root / "membranes.msd")
    volume = make_volume()
    np.save(root / "volume.npy", volume)
    arr = zarr.create_array(store=root / "volume.zarr", shape=volume.shape, chunks=(1, 40, 40), dtype="uint8")
    arr[...] = volume
    predictor = Predictor.from_file(model)
    whole = predictor.predict(volume)
    assert whole.shape == (2, *SHAPE)
    labels = (whole.argmax(0) + 1).astype(np.uint8)
    assert 0.1 < (labels == 1).mean() < 0.9 and whole.std() > 0.05  # not a trivial prediction
    return {
        "root": root,
        "model": model,
        "npy": root / "volume.npy",
        "zarr": root / "volume.zarr",
        "volume": volume,
        "whole": whole,
        "labels": labels,
        "receptive_field": predictor.receptive_field,
    }


def _events(job, **kwargs) -> list:
    return list(run(job, **kwargs))


@pytest.mark.parametrize(
    ("source", "probabilities", "name"),
    [
        ("npy", "uint8", "out.zarr"),
        ("zarr", "float16", "out.ome.zarr"),
    ],
)
def test_tiled_batch_output_equals_whole_image_prediction(data, tmp_path, source, probabilities, name):
    rf = data["receptive_field"]
    assert rf == sum(range(1, 7))  # dilations 1..6
    job = prepare(
        data["model"], str(data[source]), tmp_path / name, probabilities=probabilities, tile_size=36, halo=rf
    )  # 36 divides neither 96 nor 80
    assert job.spec.block_shape == (1, 36, 36) and job.spec.halo == (0, rf, rf)
    assert job.spec.grid == (5, 3, 3)
    events = _events(job)
    assert isinstance(events[-1], BatchFinished) and events[-1].n_computed == 45

    out = open_output(tmp_path / name, writable=False)
    assert out.is_complete()
    assert np.array_equal(out.open_labels()[...], data["labels"])
    stored = out.open_probabilities()[...]
    whole = data["whole"]
    if probabilities == "uint8":
        assert stored.dtype == np.uint8
        assert np.abs(stored - whole * 255.0).max() <= 0.5 + 1e-3  # round(p * 255) of the same p
    else:
        assert stored.dtype == np.float16
        assert (np.abs(stored.astype(np.float32) - whole) <= np.abs(whole) * 2.0**-11 + 1e-5).all()


def test_default_halo_is_the_receptive_field_and_defaults_cover_whole_planes(data, tmp_path):
    job = prepare(data["model"], str(data["npy"]), tmp_path / "default.zarr")
    rf = data["receptive_field"]
    assert job.spec.halo == (0, rf, rf) and job.spec.block_shape == (1, 96, 80)
    assert job.spec.probabilities == "none" and job.spec.labels
    events = _events(job)
    assert [type(e) for e in events] == [BatchStarted] + [BlockWritten] * 5 + [BatchFinished]
    assert np.array_equal(open_output(tmp_path / "default.zarr").open_labels()[...], data["labels"])


def test_run_yields_started_one_block_written_per_missing_block_and_finished(data, tmp_path):
    out_path = tmp_path / "resumed.zarr"
    kwargs = dict(probabilities="uint8", tile_size=40)
    job = prepare(data["model"], str(data["npy"]), out_path, **kwargs)
    n_blocks = job.spec.n_blocks
    assert n_blocks == 5 * 3 * 2

    stop = threading.Event()
    first = []
    for event in run(job, stop=stop):
        first.append(event)
        if isinstance(event, BlockWritten) and event.n_done == 7:
            stop.set()
    assert isinstance(first[0], BatchStarted) and first[0].n_done == 0 and first[0].n_blocks == n_blocks
    assert first[0].where == "this process" and first[0].output == str(out_path)
    written = [e.index for e in first if isinstance(e, BlockWritten)]
    assert len(written) == 7 and isinstance(first[-1], BatchFinished) and first[-1].n_computed == 7
    assert open_output(out_path).done() == set(written)

    job = prepare(data["model"], str(data["npy"]), out_path, **kwargs)  # the same job: resumed
    events = _events(job)
    started, blocks, finished = events[0], events[1:-1], events[-1]
    assert isinstance(started, BatchStarted) and (started.n_done, started.n_blocks) == (7, n_blocks)
    assert all(isinstance(e, BlockWritten) for e in blocks)
    missing = {idx for idx in np.ndindex(*job.spec.grid)} - set(written)
    assert sorted(e.index for e in blocks) == sorted(missing)  # each missing block once, no done block again
    assert [e.n_done for e in blocks] == list(range(8, n_blocks + 1))
    assert all(e.n_blocks == n_blocks for e in blocks)
    assert isinstance(finished, BatchFinished) and finished.n_computed == n_blocks - 7
    assert finished.n_blocks == n_blocks and finished.elapsed >= 0

    reference = tmp_path / "reference.zarr"
    _events(prepare(data["model"], str(data["npy"]), reference, **kwargs))
    for name in ("labels", "probabilities"):
        assert np.array_equal(zarr.open_group(out_path)[name][...], zarr.open_group(reference)[name][...])

    again = _events(prepare(data["model"], str(data["npy"]), out_path, **kwargs))  # complete: nothing to do
    assert [type(e) for e in again] == [BatchStarted, BatchFinished]
    assert again[0].n_done == n_blocks and again[-1].n_computed == 0


def _attributes(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


@pytest.mark.parametrize("probabilities", ["uint8", "none"])
def test_ome_zarr_output_is_finalized_with_a_pyramid_and_class_names(data, tmp_path, probabilities):
    path = tmp_path / "prediction.ome.zarr"
    job = prepare(data["model"], str(data["npy"]), path, probabilities=probabilities, tile_size=24)
    assert job.spec.output_format == "ome-zarr"
    _events(job)
    out = open_output(path, writable=False)
    assert out.finalized and out.is_complete()

    label_group = path / "labels" / "prediction" if probabilities != "none" else path
    ome = _attributes(label_group)["ome"]
    assert ome["version"] == "0.5"
    datasets = ome["multiscales"][0]["datasets"]
    levels = out.open_labels(multiscale=True)
    assert len(levels) >= 3 and [d["path"] for d in datasets] == [f"s{i}" for i in range(len(levels))]
    assert np.array_equal(levels[0][...], data["labels"])
    previous = None
    for level, dataset in zip(levels, datasets):
        factors = tuple(int(f) for f in dataset["coordinateTransformations"][0]["scale"])
        assert previous is None or all(f in (p, 2 * p) for f, p in zip(factors, previous)) and factors != previous
        previous = factors
        assert np.array_equal(level[...], data["labels"][tuple(slice(None, None, f) for f in factors)])  # nearest
    assert max(levels[-1].shape[1:]) <= 24  # down to one block
    image_label = ome["image-label"]
    assert image_label["properties"] == [
        {"label-value": 1, "class": CLASSES[0]},
        {"label-value": 2, "class": CLASSES[1]},
    ]
    assert [c["label-value"] for c in image_label["colors"]] == [1, 2]
    if probabilities != "none":
        assert _attributes(path / "labels")["ome"]["labels"] == ["prediction"]
        channels = _attributes(path)["ome"]["omero"]["channels"]
        assert [c["label"] for c in channels] == CLASSES
        pyramid = out.open_probabilities(multiscale=True)
        assert len(pyramid) == len(levels) and pyramid[0].shape == (2, *SHAPE)
        assert np.abs(pyramid[0][...] - data["whole"] * 255.0).max() <= 0.5 + 1e-3


def test_probabilities_only(data, tmp_path):
    job = prepare(data["model"], str(data["zarr"]), tmp_path / "p.zarr", probabilities="uint8", labels=False)
    _events(job)
    out = open_output(tmp_path / "p.zarr", writable=False)
    assert out.labels is None and not (tmp_path / "p.zarr" / "labels").exists()
    assert np.abs(out.open_probabilities()[...] - data["whole"] * 255.0).max() <= 0.5 + 1e-3


def test_output_names():
    assert output_name("/d/x.tif") == "x_prediction.msd.zarr"
    assert output_name("/d/x.ome.tiff", ome_zarr=True) == "x_prediction.msd.ome.zarr"
    assert output_name("/d/vol.ome.zarr/") == "vol_prediction.msd.zarr"
    assert output_name("/d/a.zarr::raw") == "a_raw_prediction.msd.zarr"
    assert output_name("/d/a.zarr::/em/s0/") == "a_em_s0_prediction.msd.zarr"
    assert output_name("rel/stack.v2.mrc") == "stack.v2_prediction.msd.zarr"
    assert output_name("/d/plain_zarr_dir") == "plain_zarr_dir_prediction.msd.zarr"


def test_batch_events_prepare_every_input_then_run_them_in_turn(data, tmp_path):
    outputs = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    events = list(batch_events(data["model"], [str(data["npy"]), str(data["zarr"])], outputs, {"tile_size": 48}))
    assert events[0] == Prepared(((20, 0), (20, 0)), tuple(str(p) for p in outputs))  # 5 x 2 x 2 blocks each
    stream = [BatchStarted] + [BlockWritten] * 20 + [BatchFinished]
    assert all(isinstance(e, InputEvent) for e in events[1:])
    assert [(e.index, type(e.event)) for e in events[1:]] == [(i, t) for i in (0, 1) for t in stream]
    for path in outputs:
        assert np.array_equal(open_output(path, writable=False).open_labels()[...], data["labels"])

    stopped = threading.Event()
    stopped.set()
    assert list(batch_events(data["model"], [str(data["npy"])], [tmp_path / "c.zarr"], {}, stopped)) == []
    assert not (tmp_path / "c.zarr").exists()

    with pytest.raises(BatchError, match="missing.tif"):  # a bad input fails before any block is computed
        list(
            batch_events(
                data["model"],
                [str(data["npy"]), str(tmp_path / "missing.tif")],
                [tmp_path / "d.zarr", tmp_path / "e.zarr"],
                {},
            )
        )
    assert not open_output(tmp_path / "d.zarr", writable=False).done()
