"""``napari-msd measure``: objects and their table from a batch output or a labels image, one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_msd.cli import main
from napari_msd.io.outputs import create_or_resume
from napari_msd.objects import label_components, split_objects

from helpers.objects import assert_same_objects, ball, class_blobs
from helpers.outputs import NAMES, make_job, write_blocks

SHAPE = (8, 30, 34)


def _truth() -> tuple[np.ndarray, np.ndarray]:
    """Labels 1..3 (background, membrane, mitochondrion) and probabilities that agree with them."""
    labels = class_blobs(SHAPE, seed=0) + 1
    labels[labels == 4] = 3
    probabilities = np.stack([(labels == k + 1).astype(np.float32) * 0.8 + 0.1 for k in range(3)])
    return labels.astype(np.uint8), probabilities


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_measure")
    truth = _truth()
    made = {"root": root}
    for name, kw in (("plain", {"probabilities": "none"}), ("ome", {"output_format": "ome-zarr"})):
        job = make_job(input_shape=SHAPE, block_shape=(4, 16, 16), input=f"{name}.zarr", **kw)
        out = create_or_resume(root / f"{name}.msd.zarr", job)
        write_blocks(out, list(np.ndindex(*job.grid)), truth)
        made[name] = out.path
    return made


def _measure(args, capsys) -> tuple[int, str, str]:
    code = main(["measure", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _one_line_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-msd measure: error:"), err
    for word in words:
        assert word in lines[0], lines[0]


def test_a_batch_output_gives_one_row_per_object_and_a_summary_per_class(outputs, tmp_path, capsys):
    table = tmp_path / "objects.csv"
    code, out, err = _measure([outputs["plain"], "-o", table], capsys)
    assert code == 0, err
    rows = _rows(table)
    labels = _truth()[0]
    expected = label_components(labels)
    assert len(rows) == expected.n_objects
    assert [r["class"] for r in rows] == [NAMES[c - 1] for c in expected.classes[1:]]
    assert int(rows[0]["volume_px"]) == expected.sizes[1] and "surface_px" in rows[0]
    lines = out.strip().splitlines()
    for k, name in enumerate(NAMES, start=1):
        n = int((expected.classes == k).sum())
        total = int(expected.sizes[expected.classes == k].sum())
        assert f"{name}: {n} objects, total volume {total:,} px" in lines
    assert lines[-1] == f"wrote {table}: {len(rows)} objects"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects.csv"]  # no scratch left behind


def test_classes_instances_and_overwrite(outputs, tmp_path, capsys):
    table, instances = tmp_path / "mito.csv", tmp_path / "mito.zarr"
    args = [outputs["plain"], "--class", "mitochondrion", "--min-size", "3", "--instances", instances, "-o", table]
    code, out, err = _measure(args, capsys)
    assert code == 0, err
    expected = label_components(_truth()[0], classes=[3], min_size=3)
    assert_same_objects(zarr.open_array(instances, mode="r")[...], expected.labels)
    assert {r["class"] for r in _rows(table)} == {"mitochondrion"} and len(_rows(table)) == expected.n_objects
    assert out.splitlines()[0].startswith("mitochondrion: ") and len(out.splitlines()) == 2
    before = table.read_bytes()
    _one_line_error(*_measure(args, capsys), "mito.csv already exists", "--overwrite")
    assert table.read_bytes() == before
    table.unlink()
    _one_line_error(*_measure(args, capsys), "mito.zarr already exists", "--overwrite")
    assert not table.exists()
    code, _, err = _measure([*args, "--overwrite", "--full-connectivity"], capsys)
    assert code == 0, err
    full = label_components(_truth()[0], classes=[3], min_size=3, connectivity=3)
    assert_same_objects(zarr.open_array(instances, mode="r")[...], full.labels)


def test_bad_input_ends_with_one_line_and_writes_nothing(outputs, tmp_path, capsys):
    table = tmp_path / "t.csv"
    _one_line_error(
        *_measure([outputs["plain"], "--class", "nucleus", "-o", table], capsys),
        "no class 'nucleus'",
        "background, membrane, mitochondrion",
    )
    _one_line_error(*_measure([outputs["plain"], "--boundary", "membrane", "-o", table], capsys), "no probabilities")
    _one_line_error(*_measure([outputs["plain"], "--unit", "nm", "-o", table], capsys), "--scale")
    _one_line_error(*_measure([outputs["plain"], "--scale", "1", "2", "-o", table], capsys), "3 pixel sizes")
    np.save(tmp_path / "small.npy", np.zeros((4, 4), np.float32))
    _one_line_error(*_measure([outputs["plain"], "--image", tmp_path / "small.npy", "-o", table], capsys), "shape")
    _one_line_error(*_measure([tmp_path / "missing.zarr", "-o", table], capsys), "missing.zarr")
    _one_line_error(*_measure([outputs["plain"], "-o", tmp_path / "no" / "t.csv"], capsys), "does not exist")
    foreign = tmp_path / "data.zarr"
    zarr.create_array(foreign, shape=(2, 2), dtype="uint8")
    args = [outputs["plain"], "--instances", foreign, "--overwrite", "-o", table]
    _one_line_error(*_measure(args, capsys), "not an instances store")
    assert zarr.open_array(foreign, mode="r").shape == (2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "small.npy"]


def test_split_along_the_boundary_probability_of_an_ome_output(outputs, tmp_path, capsys):
    table, instances = tmp_path / "split.csv", tmp_path / "split.zarr"
    args = [outputs["ome"], "--boundary", "membrane", "--class", "mitochondrion", "--instances", instances]
    code, _, err = _measure([*args, "-o", table], capsys)
    assert code == 0, err
    labels, probabilities = _truth()
    components = label_components(labels, classes=[3])
    expected = split_objects(components.labels, boundary=(probabilities[1] * 255).round().astype(np.uint8))
    assert_same_objects(zarr.open_array(instances, mode="r")[...], expected.labels)
    assert len(_rows(table)) == expected.n_objects


def test_a_labels_image_with_scale_and_intensity(tmp_path, capsys):
    shape = (40, 64)
    labels = np.zeros(shape, np.uint8)
    labels[ball(shape, (20, 20), 10) | ball(shape, (20, 37), 10)] = 1  # two touching disks
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    np.save(tmp_path / "image.npy", np.where(labels > 0, 200.0, 10.0))
    table = tmp_path / "disks.csv"
    args = [tmp_path / "labels.tif", "--image", tmp_path / "image.npy", "--scale", "4", "4", "--unit", "nm"]
    code, out, err = _measure([*args, "--split", "-o", table], capsys)
    assert code == 0, err
    rows = _rows(table)
    assert len(rows) == 2 and {r["class"] for r in rows} == {"class 1"}
    assert float(rows[0]["area_nm2"]) == 16 * int(rows[0]["area_px"])
    assert float(rows[0]["mean_intensity"]) == 200.0
    assert out.splitlines()[0].startswith("class 1: 2 objects, total area") and " nm2" in out
    code, _, _ = _measure([tmp_path / "labels.tif", "-o", tmp_path / "whole.csv"], capsys)
    assert code == 0 and len(_rows(tmp_path / "whole.csv")) == 1


def test_ome_zarr_pixel_sizes_give_physical_columns(tmp_path, capsys):
    labels = class_blobs((6, 20, 22), seed=3)
    group = zarr.open_group(tmp_path / "labels.ome.zarr", mode="w", zarr_format=3)
    group.create_array("s0", shape=labels.shape, chunks=(3, 10, 11), dtype="uint8")[...] = labels
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    scale = [{"type": "scale", "scale": [0.05, 0.01, 0.01]}]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": scale}]}],
    }
    table = tmp_path / "t.csv"
    code, out, err = _measure([tmp_path / "labels.ome.zarr", "--class", "2", "-o", table], capsys)
    assert code == 0, err
    rows = _rows(table)
    assert rows and {r["class_id"] for r in rows} == {"2"}
    np.testing.assert_allclose(float(rows[0]["volume_um3"]), int(rows[0]["volume_px"]) * 0.05 * 0.01 * 0.01)
    np.testing.assert_allclose(float(rows[0]["centroid_z_um"]), float(rows[0]["centroid_z_px"]) * 0.05)
    assert " um3" in out
