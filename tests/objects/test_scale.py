"""Pixel sizes from OME-Zarr metadata, and the unit symbols of column names."""

from __future__ import annotations

import json

import numpy as np
import zarr

from napari_msd.objects import Scale, ome_scale


def _ome_image(path, scale, units, top=None):
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("s0", shape=(4, 6, 5), chunks=(4, 6, 5), dtype="uint8")
    axes = [{"name": n, "type": "space", **({"unit": u} if u else {})} for n, u in zip("zyx", units)]
    image = {
        "axes": axes,
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }
    if top is not None:
        image["coordinateTransformations"] = [{"type": "scale", "scale": top}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [image]}
    return path


def test_scale_of_an_ome_zarr_image_its_array_and_a_group(tmp_path):
    path = _ome_image(tmp_path / "vol.ome.zarr", [30.0, 4.0, 4.0], ["nanometer"] * 3)
    assert ome_scale(path, 3) == Scale((30.0, 4.0, 4.0), "nm")
    assert ome_scale(f"{path}::s0", 3) == Scale((30.0, 4.0, 4.0), "nm")
    assert ome_scale(path / "s0", 3) == Scale((30.0, 4.0, 4.0), "nm")
    scaled = _ome_image(tmp_path / "top.ome.zarr", [1.0, 2.0, 2.0], ["micrometer"] * 3, top=[0.5, 0.5, 0.5])
    assert ome_scale(scaled, 3) == Scale((0.5, 1.0, 1.0), "um")


def test_no_scale_when_there_is_none_or_it_is_ones_without_units(tmp_path):
    assert ome_scale(_ome_image(tmp_path / "ones.zarr", [1.0, 1.0, 1.0], [None] * 3), 3) is None
    plain = zarr.create_array(tmp_path / "plain.zarr", shape=(3, 3), dtype="uint8")
    assert plain is not None and ome_scale(tmp_path / "plain.zarr", 2) is None
    assert ome_scale(tmp_path / "missing.zarr", 2) is None
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    assert ome_scale(broken, 3) is None
    np.testing.assert_equal(Scale((2, 3)).suffix(2), "_phys")
    assert Scale((2.0, 3.0), "µm").suffix(2) == "_um2" and not Scale((2.0, 3.0)).isotropic
    assert json.dumps(Scale((1.0, 1.0)).pixel_size) == "[1.0, 1.0]"
