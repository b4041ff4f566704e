"""``napari-msd export``: a model file as a bioimage.io package that ``info``, ``predict`` and bioimageio.core read;
existing files are never replaced without ``--overwrite``, and every bad input is one line with exit status 2."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_msd.cli import main
from napari_msd.io import save_model

from helpers import networks

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_export")
    net = networks.msd()
    meta = networks.metadata(net)
    model = save_model(root / "membranes.msd", net, meta, class_names=["membrane", "interior", "mito"])
    np.save(root / "image.npy", networks.image((40, 52), seed=2))
    return {"root": root, "model": model, "image": root / "image.npy"}


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(code: int, out: str, err: str, command: str = "export") -> str:
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"napari-msd {command}: error: "), err
    return lines[0]


def test_export_then_info_and_predict_read_the_package(files, tmp_path, capsys):
    package = tmp_path / "membranes.zip"
    code, out, err = _run(["export", files["model"], "-o", package, "--image", files["image"]], capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {package}: a bioimage.io model package") and "bioimageio test" in out
    with zipfile.ZipFile(package) as archive:
        assert "rdf.yaml" in archive.namelist()
        assert np.load(archive.open("test_input.npy")).shape == (1, 1, 40, 52)  # the whole (small) image

    code, out, _ = _run(["info", package], capsys)
    assert code == 0
    code, reference, _ = _run(["info", files["model"]], capsys)
    assert json.loads(out) == json.loads(reference) and json.loads(out)["class_names"] == [
        "membrane",
        "interior",
        "mito",
    ]

    outputs = [tmp_path / "from_zip.zarr", tmp_path / "from_msd.zarr"]
    for model, output in zip([package, files["model"]], outputs):
        assert _run(["predict", model, files["image"], output, "--quiet"], capsys)[0] == 0
    a, b = (zarr.open_group(str(p), mode="r") for p in outputs)
    np.testing.assert_array_equal(a["labels"][...], b["labels"][...])


def test_the_package_passes_bioimageio_cores_test(files, tmp_path, capsys):
    from bioimageio.core import test_model

    package = tmp_path / "synthetic.zip"
    assert (
        _run(["export", files["model"], "-o", package, "--author", "Jane Doe", "--name", "Membranes"], capsys)[0] == 0
    )
    assert test_model(package).status == "passed"
    with zipfile.ZipFile(package) as archive:
        rdf = archive.read("rdf.yaml").decode()
    assert "Jane Doe" in rdf and "name: Membranes" in rdf


def test_an_existing_package_is_kept_without_overwrite(files, tmp_path, capsys):
    package = tmp_path / "taken.zip"
    package.write_bytes(b"earlier")
    line = _one_error_line(*_run(["export", files["model"], "-o", package], capsys))
    assert "already exists" in line and "--overwrite" in line and package.read_bytes() == b"earlier"
    assert _run(["export", files["model"], "-o", package, "--overwrite"], capsys)[0] == 0
    assert zipfile.is_zipfile(package)


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["-o", "{root}/model.msd2"], "a bioimage.io package is a .zip file"),
        (["-o", "{root}/missing/model.zip"], "does not exist"),
        (["-o", "{root}/m.zip", "--image", "{root}/missing.tif"], "no such file"),
        (["-o", "{root}/m.zip", "--license", "GPL"], "not an SPDX license identifier"),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(files, tmp_path, capsys, args, phrase):
    args = [a.format(root=tmp_path) for a in args]
    line = _one_error_line(*_run(["export", files["model"], *args], capsys))
    assert phrase in line
    assert not list(tmp_path.rglob("*.zip"))


def test_a_foreign_zip_is_refused_by_info_with_one_line(tmp_path, capsys):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nname: someone else's model\n")
    line = _one_error_line(*_run(["info", foreign], capsys), command="info")
    assert "not a napari-msd export" in line and str(foreign) in line
    line = _one_error_line(*_run(["export", foreign, "-o", tmp_path / "again.zip"], capsys))
    assert "not a napari-msd export" in line
