"""Prediction outputs: block-wise writes, resumable done records, safe refusal, OME-Zarr 0.5 with a pyramid."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_msd.io.images import open_image
from napari_msd.io.outputs import JobSpec, OutputError, PredictionOutput, create_or_resume, open_output

NAMES = ["background", "membrane", "mitochondrion"]
COLORS = ["#000000", "#ff0000", "#00ff80"]


def _job(**kw) -> JobSpec:
    base = dict(model_sha256="ab" * 32, input="raw.zarr::volume", input_shape=(5, 20, 27), block_shape=(4, 8, 8),
                halo=3, n_classes=3, class_names=NAMES, class_colors=COLORS, probabilities="uint8",
                output_format="zarr")
    return JobSpec(**{**base, **kw})


def _truth(job: JobSpec) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic labels (1..K) and float32 probabilities (K, *shape) for a job's whole output."""
    grids = np.indices(job.input_shape, dtype=np.float32)
    logits = np.stack([np.sin(0.3 * (k + 1) * grids.sum(0) + k) for k in range(job.n_classes)])
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return (probs.argmax(0) + 1).astype(np.uint8), probs.astype(np.float32)


def _write(out: PredictionOutput, blocks, truth=None) -> None:
    labels, probs = truth if truth is not None else _truth(out.job)
    for idx in blocks:
        region = out.job.block_slices(idx)
        out.write_block(idx, region,
                        labels=labels[region] if out.job.labels else None,
                        probabilities=probs[(slice(None), *region)] if out.job.probabilities != "none" else None)


def _write_in_child(out: PredictionOutput, blocks: list) -> None:  # runs in a spawned process
    _write(out, blocks)


def _snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# -- job -----------------------------------------------------------------------------------------------------------


def test_job_round_trips_and_validates():
    job = _job()
    assert job.halo == (3, 3, 3) and job.grid == (2, 3, 4) and job.n_blocks == 24
    assert job.labels_dtype == np.uint8
    assert _job(n_classes=300, class_names=[], class_colors=[]).labels_dtype == np.uint16
    assert JobSpec.from_dict(job.to_dict()) == job
    assert job.block_slices((1, 2, 3)) == (slice(4, 5), slice(16, 20), slice(24, 27))
    for bad in (dict(input_shape=(4,)), dict(block_shape=(4, 8)), dict(class_names=["a"]), dict(probabilities="f32"),
                dict(output_format="n5"), dict(class_colors=["red"] * 3), dict(labels=False, probabilities="none"),
                dict(block_shape=(0, 8, 8))):
        with pytest.raises(ValueError):
            _job(**bad)
    with pytest.raises(ValueError, match="lacks"):
        JobSpec.from_dict({"input": "x"})


# -- plain zarr: write, done, resume -------------------------------------------------------------------------------


def test_create_write_done_resume(tmp_path):
    path = tmp_path / "pred.zarr"
    job = _job()
    out = create_or_resume(path, job)
    assert out.done() == set() and out.labels.chunks == (4, 8, 8) and out.probabilities.chunks == (1, 4, 8, 8)
    assert dict(zarr.open_group(str(path), mode="r").attrs)["napari_msd"]["job"] == job.to_dict()
    first = [(0, 0, 0), (1, 2, 3), (0, 1, 2)]
    _write(out, first)
    assert out.done() == set(first) and not out.is_complete()

    again = create_or_resume(path, _job())
    assert again.done() == set(first)
    labels, probs = _truth(job)
    region = job.block_slices((1, 2, 3))
    np.testing.assert_array_equal(again.labels[region], labels[region])
    np.testing.assert_array_equal(again.probabilities[(slice(None), *region)],
                                  np.rint(probs[(slice(None), *region)] * 255).astype(np.uint8))
    _write(again, again.missing())
    assert again.is_complete() and again.is_complete(24)
    np.testing.assert_array_equal(open_image(f"{path}::labels")[...], labels)
    again.finalize()
    assert again.finalized and open_output(path).finalized
    np.testing.assert_array_equal(again.open_labels()[...], labels)
    assert again.open_probabilities().shape == (3, *job.input_shape)


def test_different_job_refused_store_untouched(tmp_path):
    path = tmp_path / "pred.zarr"
    out = create_or_resume(path, _job())
    _write(out, [(0, 0, 0)])
    before = _snapshot(path)
    for other in (_job(model_sha256="cd" * 32), _job(block_shape=(4, 16, 16)), _job(output_format="ome-zarr")):
        with pytest.raises(OutputError) as err:
            create_or_resume(path, other)
        msg = _one_line(err)
        assert str(path) in msg and "different prediction" in msg and "--overwrite" in msg
    assert _snapshot(path) == before
    assert "another model" in str(pytest.raises(OutputError, create_or_resume, path, _job(model_sha256="x")).value)


def test_overwrite_recreates(tmp_path):
    path = tmp_path / "pred.zarr"
    _write(create_or_resume(path, _job()), [(0, 0, 0), (1, 1, 1)])
    new_job = _job(block_shape=(5, 10, 10), probabilities="float16")
    out = create_or_resume(path, new_job, overwrite=True)
    assert out.job == new_job and out.done() == set() and out.probabilities.dtype == np.float16
    assert not out.labels[...].any()
    assert create_or_resume(path, new_job).done() == set()


def test_foreign_content_refused_even_with_overwrite(tmp_path):
    foreign_zarr = tmp_path / "raw.zarr"
    zarr.create_array(str(foreign_zarr), shape=(4, 4), dtype="uint8")[...] = 7
    other_dir = tmp_path / "results"
    other_dir.mkdir()
    (other_dir / "notes.txt").write_text("keep me")
    a_file = tmp_path / "pred.zarr"
    a_file.write_text("not a store")
    for path in (foreign_zarr, other_dir, a_file):
        before = _snapshot(path) if path.is_dir() else path.read_bytes()
        for overwrite in (False, True):
            with pytest.raises(OutputError) as err:
                create_or_resume(path, _job(), overwrite=overwrite)
            assert str(path) in _one_line(err)
        assert (_snapshot(path) if path.is_dir() else path.read_bytes()) == before
    assert "not a napari-msd prediction output (a zarr store)" in str(
        pytest.raises(OutputError, create_or_resume, foreign_zarr, _job()).value)
    assert "is a file" in str(pytest.raises(OutputError, create_or_resume, a_file, _job(), overwrite=True).value)


def test_empty_directory_and_new_parents_are_used(tmp_path):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert create_or_resume(empty, _job()).done() == set()
    assert create_or_resume(tmp_path / "a" / "b" / "pred.zarr", _job()).labels is not None


def test_interrupted_creation_is_redone_and_damage_refused(tmp_path):
    path = tmp_path / "pred.zarr"
    zarr.open_group(str(path), mode="w", attributes={"napari_msd": {"layout": 1, "job": None}})
    out = create_or_resume(path, _job())  # killed while creating: nothing to keep, so no --overwrite needed
    _write(out, [(0, 0, 0)])
    zarr.open_group(str(path), mode="r+").create_array("labels", shape=(5, 20, 27), chunks=(5, 5, 5), dtype="uint8",
                                                       overwrite=True)
    with pytest.raises(OutputError) as err:
        create_or_resume(path, _job())
    assert "damaged" in _one_line(err) and "--overwrite" in str(err.value)
    assert create_or_resume(path, _job(), overwrite=True).done() == set()


def test_unwritable_destination(tmp_path, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError) as err:
        create_or_resume(a_file / "pred.zarr", _job())
    assert str(a_file / "pred.zarr") in _one_line(err) and "is a file" in str(err.value)

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: simulate the refusal of the file system
        def deny(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(os, "mkdir", deny)
    else:
        locked.chmod(0o500)
    try:
        with pytest.raises(OutputError) as err:
            create_or_resume(locked / "pred.zarr", _job())
        assert str(locked / "pred.zarr") in _one_line(err) and "permission denied" in str(err.value)
    finally:
        locked.chmod(0o700)


def test_open_output_refuses_other_things(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        open_output(tmp_path / "nope.zarr")
    zarr.create_array(str(tmp_path / "raw.zarr"), shape=(4, 4), dtype="uint8")
    with pytest.raises(OutputError, match="not a napari-msd prediction output"):
        open_output(tmp_path / "raw.zarr")


# -- block writes --------------------------------------------------------------------------------------------------


def test_two_processes_write_disjoint_blocks(tmp_path):
    job = _job(input_shape=(6, 24, 30), block_shape=(3, 8, 8))
    out = create_or_resume(tmp_path / "pred.zarr", job)
    blocks = list(np.ndindex(*job.grid))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_in_child, args=(out, blocks[i::2])) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert out.done() == set(blocks) and out.is_complete()
    labels, probs = _truth(job)
    np.testing.assert_array_equal(out.labels[...], labels)
    np.testing.assert_array_equal(out.probabilities[...], np.rint(probs * 255).astype(np.uint8))


def test_block_that_failed_midway_is_not_recorded(tmp_path, monkeypatch):
    path = tmp_path / "pred.zarr"
    out = create_or_resume(path, _job())
    original = zarr.Array.__setitem__

    def disk_full_for_probabilities(self, key, value):
        if self.path.endswith("probabilities"):
            raise OSError(28, "No space left on device")
        return original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", disk_full_for_probabilities)
    with pytest.raises(OutputError) as err:
        _write(out, [(1, 1, 1)])
    assert str(path) in _one_line(err) and "No space left" in str(err.value)
    region = out.job.block_slices((1, 1, 1))
    assert out.labels[region].any()  # the labels of the block did reach the disk ...
    assert out.done() == set()  # ... but the block is not counted
    monkeypatch.setattr(zarr.Array, "__setitem__", original)
    resumed = create_or_resume(path, _job())
    assert resumed.missing()[0] == (0, 0, 0) and len(resumed.missing()) == 24
    _write(resumed, [(1, 1, 1)])
    assert resumed.done() == {(1, 1, 1)}


def test_write_block_checks_its_arguments(tmp_path):
    out = create_or_resume(tmp_path / "pred.zarr", _job())
    labels, probs = _truth(out.job)
    region = out.job.block_slices((0, 0, 0))
    p = probs[(slice(None), *region)]
    with pytest.raises(ValueError, match="covers"):
        out.write_block((0, 0, 0), (slice(0, 4), slice(0, 8), slice(1, 9)), labels=labels[region], probabilities=p)
    with pytest.raises(ValueError, match="labels and probabilities"):
        out.write_block((0, 0, 0), region, labels=labels[region])
    with pytest.raises(ValueError, match="shape"):
        out.write_block((0, 0, 0), region, labels=labels[region][:, :4], probabilities=p)
    with pytest.raises(ValueError, match="0..3"):
        out.write_block((0, 0, 0), region, labels=labels[region] + 3, probabilities=p)
    with pytest.raises(ValueError, match="outside the block grid"):
        out.write_block((2, 0, 0), None, labels=labels[region], probabilities=p)
    assert out.done() == set()
    out.write_block((0, 0, 0), None, labels=labels[region], probabilities=(p * 255).round().astype(np.uint8))
    assert out.done() == {(0, 0, 0)}
    with pytest.raises(OutputError, match="not written yet"):
        out.finalize()


# -- OME-Zarr 0.5 --------------------------------------------------------------------------------------------------


def test_ome_zarr_metadata_pyramid_and_readers(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    path = tmp_path / "pred.ome.zarr"
    job = _job(input_shape=(10, 36, 44), block_shape=(4, 8, 8), output_format="ome-zarr")
    out = create_or_resume(path, job)
    truth = _truth(job)
    _write(out, list(np.ndindex(*job.grid)), truth)
    assert create_or_resume(path, job).is_complete()
    out.finalize()
    labels, probs = truth

    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == 3
    ome = dict(root.attrs)["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space", "space"]
    paths = [d["path"] for d in ms["datasets"]]
    assert paths == ["s0", "s1", "s2", "s3"]  # 36x44 -> 18x22 -> 9x11 -> 5x6 fits a block
    scales = [d["coordinateTransformations"][0] for d in ms["datasets"]]
    assert all(t["type"] == "scale" for t in scales)
    assert [t["scale"] for t in scales] == [[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 2.0, 2.0], [1.0, 4.0, 4.0, 4.0],
                                            [1.0, 8.0, 8.0, 8.0]]
    assert [c["label"] for c in ome["omero"]["channels"]] == NAMES
    assert root["s1"].shape == (3, 5, 18, 22) and root["s3"].shape == (3, 2, 5, 6)

    assert dict(root["labels"].attrs)["ome"]["labels"] == ["prediction"]
    label_ome = dict(root["labels/prediction"].attrs)["ome"]
    image_label = label_ome["image-label"]
    assert image_label["version"] == "0.5"
    assert image_label["colors"][1] == {"label-value": 2, "rgba": [255, 0, 0, 255]}
    names = {p["label-value"]: p["class"] for p in image_label["properties"]}
    assert names == {1: "background", 2: "membrane", 3: "mitochondrion"}
    assert [d["path"] for d in label_ome["multiscales"][0]["datasets"]] == paths

    # the pyramid: labels by striding, probabilities by the mean of 2x2x2 cells
    label_levels = out.open_labels(multiscale=True)
    np.testing.assert_array_equal(label_levels[1][...], labels[::2, ::2, ::2])
    np.testing.assert_array_equal(label_levels[3][...], labels[::8, ::8, ::8])
    stored = np.rint(probs * 255).astype(np.uint8)
    cell_mean = stored.reshape(3, 5, 2, 18, 2, 22, 2).mean(axis=(2, 4, 6), dtype=np.float32)
    np.testing.assert_array_equal(out.open_probabilities(multiscale=True)[1][...], np.rint(cell_mean).astype(np.uint8))

    # spec validation (ome-zarr-models) and ome-zarr-py's reader
    Image.from_zarr(root)
    ImageLabel.from_zarr(root["labels/prediction"])
    nodes = list(Reader(parse_url(str(path)))())
    assert [tuple(d.shape) for d in nodes[0].data][:2] == [(3, 10, 36, 44), (3, 5, 18, 22)]
    label_node = next(n for n in nodes if "properties" in n.metadata)
    assert {k: v["class"] for k, v in label_node.metadata["properties"].items()} == names
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), labels)

    # the plugin's own reader (napari's File > Open needs the napari-ome-zarr plugin for OME-Zarr)
    np.testing.assert_array_equal(open_image(f"{path}::labels/prediction")[...], labels)


def test_ome_zarr_labels_only_and_float16_2d(tmp_path):
    from ome_zarr_models.v05.image_label import ImageLabel

    job = _job(input_shape=(21, 30), block_shape=(8, 8), halo=(2, 2), probabilities="none", output_format="ome-zarr")
    out = create_or_resume(tmp_path / "labels.ome.zarr", job)
    labels, _ = _truth(job)
    _write(out, list(np.ndindex(*job.grid)))
    out.finalize()
    root = zarr.open_group(str(out.path), mode="r")
    ome = dict(root.attrs)["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["y", "x"]
    assert {p["class"] for p in ome["image-label"]["properties"]} == set(NAMES)
    ImageLabel.from_zarr(root)
    np.testing.assert_array_equal(open_image(out.path)[...], labels)
    levels = out.open_labels(multiscale=True)
    assert [lv.shape for lv in levels] == [(21, 30), (11, 15), (6, 8)]
    np.testing.assert_array_equal(levels[2][...], labels[::4, ::4])
    with pytest.raises(OutputError, match="no probabilities"):
        out.open_probabilities()

    job16 = _job(input_shape=(21, 30), block_shape=(8, 8), probabilities="float16", labels=False,
                 output_format="ome-zarr")
    out16 = create_or_resume(tmp_path / "p16.ome.zarr", job16)
    _, probs = _truth(job16)
    _write(out16, list(np.ndindex(*job16.grid)))
    out16.finalize()
    p0, p1 = out16.open_probabilities(multiscale=True)[:2]
    assert p0.dtype == np.float16 and p1.shape == (3, 11, 15)
    padded = np.pad(p0[...].astype(np.float32), [(0, 0), (0, 1), (0, 0)], mode="edge")
    expected = padded.reshape(3, 11, 2, 15, 2).mean(axis=(2, 4)).astype(np.float16)
    np.testing.assert_allclose(p1[...].astype(np.float32), expected.astype(np.float32), rtol=1e-3)
    ms = dict(zarr.open_group(str(out16.path), mode="r").attrs)["ome"]["multiscales"][0]
    assert ms["datasets"][1]["coordinateTransformations"][1] == {"type": "translation",
                                                                 "translation": [0.0, 0.5, 0.5]}


def test_recommended_output_names_keep_the_format_readable_from_the_name(tmp_path):
    from napari_msd.inference.batch import output_format
    from napari_msd.io.outputs import OUTPUT_SUFFIXES

    assert [output_format(f"result{suffix}") for suffix in OUTPUT_SUFFIXES] == ["zarr", "ome-zarr"]
    for suffix in OUTPUT_SUFFIXES:
        path = tmp_path / f"result{suffix}"
        out = create_or_resume(path, _job(output_format=output_format(path)))
        _write(out, np.ndindex(*out.job.grid))
        assert open_output(path).job.output_format == output_format(path)
