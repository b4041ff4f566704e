"""``napari-msd predict``: resuming after a kill, a dask LocalCluster, and one-line errors that lose nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_msd.cli import main
from napari_msd.io import save_model
from napari_msd.io.outputs import OutputError, open_output
from napari_msd.models import MSDNet

from helpers.batch import make_model, make_volume

SCRIPT = Path(sys.executable).with_name("napari-msd")
# one torch/OpenMP thread per process: two cores shared with other work (and with dask workers)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_predict")
    model = make_model(root / "membranes.msd")
    np.save(root / "small.npy", make_volume())
    np.save(root / "tall.npy", make_volume((12, 96, 80), seed=1))
    return {"root": root, "model": model, "small": root / "small.npy", "tall": root / "tall.npy"}


def _predict(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _read(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(path, mode="r")
    return {name: root[name][...] for name in ("labels", "probabilities") if name in root}


def _snapshot(path: Path) -> dict[str, str]:
    """Every file and directory under ``path`` with its content's digest."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


def test_predict_writes_and_a_finished_job_reruns_as_a_no_op(files, tmp_path, capsys):
    out = tmp_path / "pred.zarr"
    code, stdout, stderr = _predict(
        [files["model"], files["small"], out, "--tile-size", "36", "--probabilities"], capsys
    )
    assert code == 0, stderr
    assert stderr.strip() == "predicting 45 blocks of 1x36x36 (halo 0x21x21) in this process; MS-D in float32 (chosen)"
    assert stdout.startswith(f"wrote {out}: 45 blocks in ")
    before = _snapshot(out)
    code, stdout, stderr = _predict(
        [files["model"], files["small"], out, "--tile-size", "36", "--probabilities"], capsys
    )
    assert code == 0 and "resuming: 45 already done" in stderr and ": 0 blocks in " in stdout
    assert _snapshot(out) == before


def test_precision_is_chosen_on_the_command_line_and_said(files, tmp_path, capsys):
    outputs = {}
    for chosen in ("float32", "bfloat16"):
        out = tmp_path / f"{chosen}.zarr"
        code, _, stderr = _predict([files["model"], files["small"], out, "--precision", chosen], capsys)
        assert code == 0, stderr
        assert stderr.strip().endswith(f"; MS-D in {chosen} (chosen)")
        outputs[chosen] = _read(out)["labels"]
    assert np.mean(outputs["float32"] == outputs["bfloat16"]) > 0.98
    with pytest.raises(SystemExit):
        main(["predict", str(files["model"]), str(files["small"]), str(tmp_path / "x.zarr"), "--precision", "half"])
    err = capsys.readouterr().err
    assert "invalid choice: 'half'" in err and not (tmp_path / "x.zarr").exists()


def test_resume_after_a_kill_equals_an_uninterrupted_run(files, tmp_path, capsys):
    args = [files["model"], files["tall"], None, "--tile-size", "32", "--probabilities", "--quiet"]
    reference = tmp_path / "reference.zarr"
    code, _, stderr = _predict([reference if a is None else a for a in args[:-1]], capsys)
    assert code == 0, stderr
    expected = _read(reference)
    n_blocks = 12 * 3 * 3

    out = tmp_path / "killed.zarr"
    command = [str(SCRIPT), "predict", *(str(out if a is None else a) for a in args)]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        output = None
        while time.monotonic() < deadline and proc.poll() is None:
            if output is None:
                try:
                    output = open_output(out, writable=False)
                except OutputError:  # not created yet
                    time.sleep(0.005)
                    continue
            if output.done():  # at least one block written: kill it now, mid-run
                proc.kill()
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -9, f"the prediction ended before it could be killed: {err}"

    killed = open_output(out, writable=False)
    done = killed.done()
    assert 1 <= len(done) < n_blocks
    stored = _read(out)
    for index in done:  # every block recorded as done holds all its data: no half-written block counts
        region = killed.job.block_slices(index)
        assert np.array_equal(stored["labels"][region], expected["labels"][region]), index
        assert np.array_equal(
            stored["probabilities"][(slice(None), *region)], expected["probabilities"][(slice(None), *region)]
        ), index

    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {len(done)} already done" in again.stderr
    assert f": {n_blocks - len(done)} blocks in " in again.stdout  # only the missing blocks were computed
    assert open_output(out).is_complete()
    result = _read(out)
    assert np.array_equal(result["labels"], expected["labels"])
    assert np.array_equal(result["probabilities"], expected["probabilities"])


def test_local_dask_cluster_equals_this_process(files, tmp_path, capsys):
    args = [files["model"], files["small"], None, "--tile-size", "48", "--probabilities"]
    single = tmp_path / "single.zarr"
    code, _, stderr = _predict([single if a is None else a for a in args], capsys)
    assert code == 0, stderr
    cluster = tmp_path / "cluster.zarr"
    command = [
        str(SCRIPT),
        "predict",
        *(str(cluster if a is None else a) for a in args),
        "--scheduler",
        "local",
        "--workers",
        "2",
        "--quiet",
    ]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "predicting 20 blocks of 1x48x48 (halo 0x21x21) in local" in result.stderr
    assert open_output(cluster).is_complete()
    expected, found = _read(single), _read(cluster)
    assert np.array_equal(found["labels"], expected["labels"])
    assert np.array_equal(found["probabilities"], expected["probabilities"])


# -- errors: one line on stderr, exit status 2, nothing already written lost ------------------------------------------


@pytest.fixture(scope="module")
def earlier(files, tmp_path_factory) -> Path:
    """A finished prediction (labels only, whole planes) that failing commands must leave exactly as it is."""
    path = tmp_path_factory.mktemp("earlier") / "earlier.zarr"
    assert main(["predict", str(files["model"]), str(files["small"]), str(path), "--quiet"]) == 0
    return path


def _error(args: list, capsys) -> str:
    code, stdout, stderr = _predict(args, capsys)
    assert code == 2, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("napari-msd predict: error: ")
    return lines[0]


def test_errors_before_any_work_leave_an_existing_output_untouched(files, earlier, tmp_path, capsys):
    before = _snapshot(earlier)
    model, image = files["model"], files["small"]
    # --overwrite too: a command that fails must not replace anything
    for_earlier = [earlier, "--overwrite", "--probabilities"]

    line = _error([model, tmp_path / "missing.tif", *for_earlier], capsys)
    assert "missing.tif" in line and "no such file" in line

    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    line = _error([model, garbage, *for_earlier], capsys)
    assert "garbage.tif" in line and "TIFF" in line

    flat = tmp_path / "flat.npy"
    np.save(flat, make_volume((64, 64)))
    two_and_a_half = save_model(
        tmp_path / "context.msd",
        MSDNet(3, 2, depth=4),
        class_names=["a", "b"],
        input_spec={"mode": "2.5d", "slices": 3, "orientations": ["xy"]},
    )
    line = _error([two_and_a_half, flat, *for_earlier], capsys)
    assert "2.5d" in line and "2D" in line and "flat.npy" in line

    line = _error([tmp_path / "nowhere.msd", image, *for_earlier], capsys)
    assert "nowhere.msd" in line and "does not exist" in line

    corrupt = tmp_path / "corrupt.msd"
    corrupt.write_bytes(files["model"].read_bytes()[:-100])  # a truncated copy
    line = _error([corrupt, image, *for_earlier], capsys)
    assert "corrupt.msd" in line

    noise = tmp_path / "noise.msd"
    noise.write_bytes(np.random.default_rng(1).bytes(2000))
    assert "noise.msd" in _error([noise, image, *for_earlier], capsys)

    assert "tile size" in _error([model, image, *for_earlier, "--tile-size", "0"], capsys)

    assert _snapshot(earlier) == before
    assert not list(tmp_path.glob("*.zarr"))


def test_a_different_prediction_is_not_overwritten_without_overwrite(files, earlier, capsys):
    before = _snapshot(earlier)
    line = _error([files["model"], files["small"], earlier, "--tile-size", "40", "--probabilities"], capsys)
    assert str(earlier) in line and "different prediction" in line and "--overwrite" in line
    line = _error([files["model"], files["tall"], earlier], capsys)
    assert "another input" in line
    assert _snapshot(earlier) == before


def test_overwrite_replaces_an_earlier_prediction(files, tmp_path, capsys):
    out = tmp_path / "redo.zarr"
    assert _predict([files["model"], files["small"], out], capsys)[0] == 0
    code, _, stderr = _predict([files["model"], files["small"], out, "--tile-size", "48", "--overwrite"], capsys)
    assert code == 0, stderr
    assert open_output(out).job.block_shape == (1, 48, 48)


def test_output_must_not_be_the_input(files, tmp_path, capsys):
    volume = zarr.create_array(store=tmp_path / "raw.zarr", shape=(2, 40, 40), chunks=(1, 40, 40), dtype="uint8")
    volume[...] = make_volume((2, 40, 40))
    before = _snapshot(tmp_path / "raw.zarr")
    for output in (tmp_path / "raw.zarr", f"{tmp_path}/./raw.zarr/"):
        line = _error([files["model"], tmp_path / "raw.zarr", output, "--overwrite"], capsys)
        assert "overlaps the input" in line
    assert _snapshot(tmp_path / "raw.zarr") == before

    copy = tmp_path / "copy.npy"
    copy.write_bytes(files["small"].read_bytes())
    assert "overlaps the input" in _error([files["model"], copy, copy], capsys)
    assert copy.read_bytes() == files["small"].read_bytes()


def test_overwrite_never_deletes_the_input(files, tmp_path, capsys):
    out = tmp_path / "earlier.zarr"
    assert _predict([files["model"], files["small"], out], capsys)[0] == 0
    zarr.open_group(out, mode="r+")["labels"][...] = make_volume()  # an image kept inside an earlier output
    before = _snapshot(out)
    line = _error([files["model"], out / "labels", out, "--overwrite"], capsys)
    assert "input" in line
    assert _snapshot(out) == before


def test_unwritable_destinations(files, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a directory")
    line = _error([files["model"], files["small"], blocker / "out.zarr"], capsys)
    assert "notes.txt" in line and "is a file" in line
    line = _error([files["model"], files["small"], blocker, "--overwrite"], capsys)  # never replaces files
    assert "is a file" in line
    assert blocker.read_text() == "a file, not a directory"


def test_relative_paths_name_the_same_files_from_any_directory(files, tmp_path, capsys, monkeypatch):
    """The job records absolute paths: the same relative name in another folder is another input."""
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, scale in ((first, 1), (second, 3)):
        folder.mkdir()
        np.save(folder / "vol.npy", (make_volume() * scale).astype(np.uint8))
    out = tmp_path / "out.zarr"
    monkeypatch.chdir(first)
    assert _predict([files["model"], "vol.npy", out], capsys)[0] == 0
    monkeypatch.chdir(second)
    line = _error([files["model"], "vol.npy", out], capsys)
    assert "different prediction" in line
    monkeypatch.chdir(first)
    code, _, err = _predict([files["model"], "./vol.npy", out], capsys)
    assert code == 0 and "resuming" in err


def test_an_output_folder_that_does_not_exist_is_refused(files, tmp_path, capsys):
    missing = tmp_path / "results"
    line = _error([files["model"], files["small"], missing / "pred.zarr"], capsys)
    assert line.endswith(
        f"output folder {missing} does not exist; create it first (mkdir -p {missing}) or choose another OUTPUT"
    )
    assert not missing.exists()
