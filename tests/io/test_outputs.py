"""Prediction outputs: block-wise writes, resumable done records, safe refusal (OME-Zarr in test_ome.py)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_msd.io.images import open_image
from napari_msd.io.outputs import OutputError, PredictionOutput, create_or_resume, open_output

from helpers.outputs import job_truth, make_job, write_blocks


def _write_in_child(out: PredictionOutput, blocks: list) -> None:  # runs in a spawned process
    write_blocks(out, blocks)


def _snapshot(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# -- plain zarr: write, done, resume -------------------------------------------------------------------------------


def test_create_write_done_resume(tmp_path):
    path = tmp_path / "pred.zarr"
    job = make_job()
    out = create_or_resume(path, job)
    assert out.done() == set() and out.labels.chunks == (4, 8, 8) and out.probabilities.chunks == (1, 4, 8, 8)
    assert dict(zarr.open_group(str(path), mode="r").attrs)["napari_msd"]["job"] == job.to_dict()
    first = [(0, 0, 0), (1, 2, 3), (0, 1, 2)]
    write_blocks(out, first)
    assert out.done() == set(first) and not out.is_complete()

    again = create_or_resume(path, make_job())
    assert again.done() == set(first)
    labels, probs = job_truth(job)
    region = job.block_slices((1, 2, 3))
    np.testing.assert_array_equal(again.labels[region], labels[region])
    np.testing.assert_array_equal(
        again.probabilities[(slice(None), *region)], np.rint(probs[(slice(None), *region)] * 255).astype(np.uint8)
    )
    write_blocks(again, again.missing())
    assert again.is_complete() and again.is_complete(24)
    np.testing.assert_array_equal(open_image(f"{path}::labels")[...], labels)
    again.finalize()
    assert again.finalized and open_output(path).finalized
    np.testing.assert_array_equal(again.open_labels()[...], labels)
    assert again.open_probabilities().shape == (3, *job.input_shape)


def test_different_job_refused_store_untouched(tmp_path):
    path = tmp_path / "pred.zarr"
    out = create_or_resume(path, make_job())
    write_blocks(out, [(0, 0, 0)])
    before = _snapshot(path)
    for other in (
        make_job(model_sha256="cd" * 32),
        make_job(block_shape=(4, 16, 16)),
        make_job(output_format="ome-zarr"),
    ):
        with pytest.raises(OutputError) as err:
            create_or_resume(path, other)
        msg = _one_line(err)
        assert str(path) in msg and "different prediction" in msg and "--overwrite" in msg
    assert _snapshot(path) == before
    assert "another model" in str(pytest.raises(OutputError, create_or_resume, path, make_job(model_sha256="x")).value)


def test_overwrite_recreates(tmp_path):
    path = tmp_path / "pred.zarr"
    write_blocks(create_or_resume(path, make_job()), [(0, 0, 0), (1, 1, 1)])
    new_job = make_job(block_shape=(5, 10, 10), probabilities="float16")
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
                create_or_resume(path, make_job(), overwrite=overwrite)
            assert str(path) in _one_line(err)
        assert (_snapshot(path) if path.is_dir() else path.read_bytes()) == before
    assert "not a napari-msd prediction output (a zarr store)" in str(
        pytest.raises(OutputError, create_or_resume, foreign_zarr, make_job()).value
    )
    assert "is a file" in str(pytest.raises(OutputError, create_or_resume, a_file, make_job(), overwrite=True).value)


def test_empty_directory_and_new_parents_are_used(tmp_path):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert create_or_resume(empty, make_job()).done() == set()
    assert create_or_resume(tmp_path / "a" / "b" / "pred.zarr", make_job()).labels is not None


def test_interrupted_creation_is_redone_and_damage_refused(tmp_path):
    path = tmp_path / "pred.zarr"
    zarr.open_group(str(path), mode="w", attributes={"napari_msd": {"layout": 1, "job": None}})
    out = create_or_resume(path, make_job())  # killed while creating: nothing to keep, so no --overwrite needed
    write_blocks(out, [(0, 0, 0)])
    zarr.open_group(str(path), mode="r+").create_array(
        "labels", shape=(5, 20, 27), chunks=(5, 5, 5), dtype="uint8", overwrite=True
    )
    with pytest.raises(OutputError) as err:
        create_or_resume(path, make_job())
    assert "damaged" in _one_line(err) and "--overwrite" in str(err.value)
    assert create_or_resume(path, make_job(), overwrite=True).done() == set()


def test_unwritable_destination(tmp_path, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError) as err:
        create_or_resume(a_file / "pred.zarr", make_job())
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
            create_or_resume(locked / "pred.zarr", make_job())
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
    job = make_job(input_shape=(6, 24, 30), block_shape=(3, 8, 8))
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
    labels, probs = job_truth(job)
    np.testing.assert_array_equal(out.labels[...], labels)
    np.testing.assert_array_equal(out.probabilities[...], np.rint(probs * 255).astype(np.uint8))


def test_block_that_failed_midway_is_not_recorded(tmp_path, monkeypatch):
    path = tmp_path / "pred.zarr"
    out = create_or_resume(path, make_job())
    original = zarr.Array.__setitem__

    def disk_full_for_probabilities(self, key, value):
        if self.path.endswith("probabilities"):
            raise OSError(28, "No space left on device")
        return original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", disk_full_for_probabilities)
    with pytest.raises(OutputError) as err:
        write_blocks(out, [(1, 1, 1)])
    assert str(path) in _one_line(err) and "No space left" in str(err.value)
    region = out.job.block_slices((1, 1, 1))
    assert out.labels[region].any()  # the labels of the block did reach the disk ...
    assert out.done() == set()  # ... but the block is not counted
    monkeypatch.setattr(zarr.Array, "__setitem__", original)
    resumed = create_or_resume(path, make_job())
    assert resumed.missing()[0] == (0, 0, 0) and len(resumed.missing()) == 24
    write_blocks(resumed, [(1, 1, 1)])
    assert resumed.done() == {(1, 1, 1)}


def test_write_block_checks_its_arguments(tmp_path):
    out = create_or_resume(tmp_path / "pred.zarr", make_job())
    labels, probs = job_truth(out.job)
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


def test_recommended_output_names_keep_the_format_readable_from_the_name(tmp_path):
    from napari_msd.inference.batch import output_format
    from napari_msd.io.outputs import OUTPUT_SUFFIXES

    assert [output_format(f"result{suffix}") for suffix in OUTPUT_SUFFIXES] == ["zarr", "ome-zarr"]
    for suffix in OUTPUT_SUFFIXES:
        path = tmp_path / f"result{suffix}"
        out = create_or_resume(path, make_job(output_format=output_format(path)))
        write_blocks(out, np.ndindex(*out.job.grid))
        assert open_output(path).job.output_format == output_format(path)
