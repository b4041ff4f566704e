"""The per-object table: equal to skimage's regionprops (and a whole-object marching cubes), for any block shape."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from skimage.measure import label, marching_cubes, mesh_surface_area, regionprops

from napari_msd.errors import NapariMsdError
from napari_msd.objects import ObjectTable, Scale, TableWriteError, iter_measure, measure_objects, write_csv

from helpers.arrays import CountingArray
from helpers.objects import class_blobs


def _instances(shape, seed):
    return label(class_blobs(shape, seed=seed) == 3)


def _check_against_regionprops(table, objects, image, scale=None):
    spacing = scale.pixel_size if scale is not None else (1.0,) * objects.ndim
    props = regionprops(objects, intensity_image=image, spacing=spacing)
    axes = "zyx"[-objects.ndim :]
    size = "volume" if objects.ndim == 3 else "area"
    assert table.columns["label"].tolist() == [p.label for p in props]
    np.testing.assert_array_equal(table.columns[f"{size}_px"], [p.num_pixels for p in props])
    for a, axis in enumerate(axes):
        np.testing.assert_allclose(table.columns[f"centroid_{axis}_px"], [p.centroid[a] / spacing[a] for p in props])
        np.testing.assert_array_equal(table.columns[f"bbox_{axis}_start"], [p.bbox[a] for p in props])
        np.testing.assert_array_equal(table.columns[f"bbox_{axis}_stop"], [p.bbox[a + objects.ndim] for p in props])
    np.testing.assert_allclose(table.columns["mean_intensity"], [p.intensity_mean for p in props], rtol=1e-6)
    np.testing.assert_allclose(table.columns["min_intensity"], [p.intensity_min for p in props])
    np.testing.assert_allclose(table.columns["max_intensity"], [p.intensity_max for p in props])
    if scale is not None:
        np.testing.assert_allclose(table.columns[f"{size}{scale.suffix(objects.ndim)}"], [p.area for p in props])
        for a, axis in enumerate(axes):
            np.testing.assert_allclose(
                table.columns[f"centroid_{axis}{scale.suffix()}"], [p.centroid[a] for p in props]
            )


@pytest.mark.parametrize("block", [(50, 47), (7, 9), (3, 2)])
@pytest.mark.parametrize("scale", [None, Scale((2.5, 2.5), "nm")], ids=["pixels", "nm"])
def test_2d_equals_regionprops(block, scale):
    objects = _instances((50, 47), seed=0)
    image = np.random.default_rng(0).random(objects.shape)
    table = measure_objects(objects, image=image, scale=scale, block_shape=block)
    assert len(table) == objects.max() > 20
    _check_against_regionprops(table, objects, image, scale)
    perimeters = [p.perimeter for p in regionprops(objects)]
    np.testing.assert_allclose(table.columns["perimeter_px"], perimeters, atol=1e-9)
    if scale is not None:
        np.testing.assert_allclose(table.columns["perimeter_nm"], np.array(perimeters) * 2.5, atol=1e-9)
        assert table.units["area_nm2"] == "nm2" and table.units["perimeter_nm"] == "nm"


def _whole_object_surfaces(objects, spacing):
    areas = []
    for i in range(1, objects.max() + 1):
        verts, faces, _, _ = marching_cubes(np.pad(objects == i, 1).astype(np.float32), level=0.5)
        areas.append(mesh_surface_area(verts.astype(np.float64) * np.asarray(spacing), faces))
    return np.array(areas)


@pytest.mark.parametrize("block", [(16, 20, 18), (5, 6, 7), (2, 3, 2)])
@pytest.mark.parametrize("scale", [None, Scale((3.0, 1.0, 1.5), "nanometer")], ids=["pixels", "nm"])
def test_3d_equals_regionprops_and_whole_object_marching_cubes(block, scale):
    objects = _instances((16, 20, 18), seed=1)
    image = np.random.default_rng(1).random(objects.shape).astype(np.float32)
    table = measure_objects(objects, image=image, scale=scale, block_shape=block)
    assert len(table) == objects.max() > 8
    _check_against_regionprops(table, objects, image, scale)
    np.testing.assert_allclose(table.columns["surface_px"], _whole_object_surfaces(objects, (1, 1, 1)), rtol=1e-6)
    if scale is not None:
        expected = _whole_object_surfaces(objects, scale.pixel_size)
        np.testing.assert_allclose(table.columns["surface_nm2"], expected, rtol=1e-6)
        assert table.units["volume_nm3"] == "nm3"


def test_block_wise_equals_whole_with_sparse_ids_and_classes_from_the_semantic_labels():
    semantic = class_blobs((12, 30, 28), seed=2)
    objects = label(semantic > 0).astype(np.int64) * 1000  # ids far apart
    whole = measure_objects(objects, semantic=semantic, class_names=["a", "b", "c"], block_shape=objects.shape)
    blocks = measure_objects(objects, semantic=semantic, class_names=["a", "b", "c"], block_shape=(5, 7, 9))
    assert whole.names == blocks.names
    for name in whole.names:
        if whole.columns[name].dtype == object:
            assert whole.columns[name].tolist() == blocks.columns[name].tolist()
        else:
            np.testing.assert_allclose(whole.columns[name], blocks.columns[name], rtol=1e-6)
    for row in whole.rows():  # each object's class is that of most of its pixels
        classes, counts = np.unique(semantic[objects == row["label"]], return_counts=True)
        assert row["class_id"] == classes[np.argmax(counts)]
        assert row["class"] == "abc"[row["class_id"] - 1]


def test_streams_block_by_block_and_reports_progress():
    objects = CountingArray(_instances((20, 24, 22), seed=3).astype(np.uint32), chunks=(5, 8, 11))
    events = iter_measure(objects, block_shape=(5, 8, 11))
    seen = []
    while True:
        try:
            seen.append(next(events))
        except StopIteration as done:
            table = done.value
            break
    assert [e.done for e in seen] == list(range(1, 4 * 3 * 2 + 1)) and {e.stage for e in seen} == {"measure"}
    assert max(objects.reads) == 5 * 8 * 11
    assert len(table) > 0 and table.columns["class"].tolist() == [""] * len(table)  # no classes given


def test_anisotropic_2d_pixels_have_no_physical_perimeter():
    objects = _instances((20, 20), seed=4)
    table = measure_objects(objects, scale=Scale((1.0, 2.0), "um"), surfaces=True)
    assert np.isnan(table.columns["perimeter_um"]).all()
    assert next(table.rows())["perimeter_um"] is None
    np.testing.assert_allclose(table.columns["area_um2"], table.columns["area_px"] * 2.0)
    assert "perimeter_px" not in measure_objects(objects, surfaces=False).names


def test_write_csv_writes_every_row_and_never_replaces_without_asking(tmp_path):
    table = measure_objects(_instances((20, 20), seed=5), scale=Scale((4.0, 4.0)))  # no unit: "_phys" columns
    path = write_csv(table, tmp_path / "objects.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(table) and list(rows[0]) == table.names and "area_phys" in rows[0]
    assert float(rows[0]["area_phys"]) == table.columns["area_phys"][0]
    with pytest.raises(TableWriteError, match="already exists; pass --overwrite") as err:
        write_csv(table.select(np.zeros(len(table), bool)), path)
    assert isinstance(err.value, NapariMsdError) and "\n" not in str(err.value)
    assert len(path.read_text().splitlines()) == len(table) + 1  # untouched
    write_csv(table.select(np.zeros(len(table), bool)), path, overwrite=True)
    assert path.read_text().splitlines() == [",".join(table.names)]
    assert not list(tmp_path.glob(".*partial"))
    import pandas as pd  # a napari dependency

    assert isinstance(table.to_pandas(), pd.DataFrame)


def test_table_checks_and_scale_checks():
    with pytest.raises(ValueError, match="different lengths"):
        ObjectTable({"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="positive"):
        Scale((0.0, 1.0))
    with pytest.raises(ValueError, match="axes"):
        measure_objects(np.zeros((4, 4), np.uint8), scale=Scale((1.0, 1.0, 1.0)))
    assert len(measure_objects(np.zeros((4, 4), np.uint8), image=np.zeros((4, 4)))) == 0
